"""LLM feedback records (the LFM code's format): bullets, snapshot numbering, the import command."""

import bz2
import gzip
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from annotation.llm_feedback import (
    NOT_LISTED,
    FeedbackError,
    parse_bullets,
    parse_record,
    parse_step_spec,
    prompt_style,
    read_records,
    rollout_key,
    split_yes_no,
)
from annotation.models import Answer, AuditEvent, ItemPayload, Role

from .factories import add_member, full_answer, make_items, make_project

INTENT = (
    "You will be shown a playthrough for solving a task.\n{render}\n----------\nDid you see anything that makes "
    "you believe the player is on the right track to solve the task? Answer yes or no. If yes, then list the "
    "steps when you saw helpul things by the step number and explain why these steps were helpful. List only "
    "in bullet form. Only list important helpful steps. Next under heading #Summary, summarize in one sentence "
    "what the player doing at a high level. Finally under heading #Improvement, describe how the player can "
    "improve their strategy to solve the task."
)
REASON = (
    "You will be shown a playthrough for solving a task.\n{render}\n----------\nFor each step, list its step "
    'number, then answer "yes" or "no" to indicate whether it was helpful in solving the task, then finally '
    "give a reason on why. List only in bullet form."
)
ACTION = (
    "You will be shown a playthrough for solving a task.\n{render}\n----------\nFor steps where you think the "
    "player chose the wrong action, list its step number, then write the correct action to solve the task. Do "
    "not comment on the player action, just write what you think the correct action is. List only in bullet form."
)


def render(actions, start, task="Put the apple in the fridge", before="You are in the kitchen.", number_from=None):
    """A snapshot render as get_snapshots writes it: absolute step numbers from `start`."""
    parts = [f"Task: {task}\nBefore: {before}"]
    for i, a in enumerate(actions):
        n = start + i if number_from is None else number_from + i
        parts += ["-" * 10, f"Step {n}", f"Your action: {a}", f"Result: after {a}"]
    return "\n".join(parts)


def record(fname, actions, start, response, prompt=INTENT, end=None, number_from=None):
    r = render(actions, start, number_from=number_from)
    end = start + len(actions) - 1 if end is None else end
    return {
        "prompt": prompt.format(render=r),
        "fname": fname,
        "response": response,
        "snapshot": {"fname": fname, "render": r, "render_start": start, "render_end": end},
    }


# --- bullets ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "head, steps",
    [
        ("3", [3]),
        ("Step 3", [3]),
        ("**Step 12**", [12]),
        ("Steps 2, 4", [2, 4]),
        ("2 and 4", [2, 4]),
        ("3-5", [3, 4, 5]),
        ("Steps 3–5", [3, 4, 5]),
        ("3 to 5, 9", [3, 4, 5, 9]),
        ("Step 3 (open the fridge)", [3]),
        ("Step 2, Step 7", [2, 7]),
        ("The player", None),
        ("Summary", None),
        ("3 apples", None),
    ],
)
def test_step_specs(head, steps):
    assert parse_step_spec(head) == steps


def test_backwards_and_huge_ranges_are_errors():
    with pytest.raises(ValueError, match="backwards"):
        parse_step_spec("5-3")
    with pytest.raises(ValueError, match="longer than"):
        parse_step_spec("1-5000")


def test_bullets_stop_at_headings_and_skip_non_step_bullets():
    response = (
        "Yes.\n"
        "- Step 2: The player opened the fridge.\n"
        "* Steps 4-5: picked up the apple: needed later\n"
        "- The player is on track: yes\n"
        "Step 7: not a bullet\n"
        "#Summary\n"
        "- 3: summary bullets are not step feedback\n"
    )
    bullets = parse_bullets(response)
    assert [(b.line, b.steps, b.reason) for b in bullets] == [
        (2, [2], "The player opened the fridge."),
        (3, [4, 5], "picked up the apple: needed later"),
    ]


def test_yes_no_split():
    assert split_yes_no("Yes, it opens the door") == (True, "it opens the door")
    assert split_yes_no("no - wanders off") == (False, "wanders off")
    assert split_yes_no("**No.** nothing happened") == (False, "nothing happened")
    assert split_yes_no("maybe") == (None, "maybe")


def test_prompt_styles():
    assert prompt_style(INTENT) == "intent"
    assert prompt_style(REASON) == "reason"
    assert prompt_style(ACTION) == "action"
    assert prompt_style("Rate these steps.") == "unknown"


def test_rollout_keys():
    assert rollout_key("/data/rollouts/train/17.json.bz2") == "17"
    assert rollout_key("run/ep-3.json") == "ep-3"
    assert rollout_key("run/ep-3.json", "name") == "ep-3.json"
    assert rollout_key("run/ep-3.json", "path") == "run/ep-3.json"


# --- records -----------------------------------------------------------------------


ACTIONS = [f"act {i}" for i in range(20)]


def test_absolute_numbering_maps_to_payload_indices():
    rec = parse_record(record("r/9.json.bz2", ACTIONS[:5], 21, "Yes\n- Step 22: good\n- 24-25: fine"))
    assert rec.style == "intent"
    assert rec.shown == [20, 21, 22, 23, 24]  # rollout step N is payload step N - 1
    assert [(x.index, x.step, x.productive, x.reason) for x in rec.labels] == [
        (21, 22, True, "good"),
        (23, 24, True, "fine"),
        (24, 25, True, "fine"),
    ]
    assert rec.actions[20] == "act 0"


def test_snapshot_relative_numbering_is_recognised():
    rec = parse_record(record("r/9.json", ACTIONS[:4], 21, "- 0: first\n- 3: last", number_from=0))
    assert [(x.index, x.step) for x in rec.labels] == [(20, 0), (23, 3)]


def test_exclusive_render_end_is_accepted():
    rec = parse_record(record("r/9.json", ACTIONS[:4], 5, "- 6: ok", end=9))
    assert [x.index for x in rec.labels] == [5]


def test_out_of_range_step_is_a_record_error():
    with pytest.raises(FeedbackError, match=r"line 2 names step 30, outside the snapshot \(it shows steps 21..25\)"):
        parse_record(record("r/9.json", ACTIONS[:5], 21, "Yes\n- Step 30: oops"))
    with pytest.raises(FeedbackError, match="outside the snapshot"):
        parse_record(record("r/9.json", ACTIONS[:5], 21, "- 20-22: straddles the start"))


def test_render_that_disagrees_with_its_range_is_an_error():
    with pytest.raises(FeedbackError, match="match neither"):
        parse_record(record("r/9.json", ACTIONS[:5], 21, "- 22: x", end=40))
    bad = record("r/9.json", ACTIONS[:5], 21, "- 22: x")
    bad["snapshot"]["render"] = "Task: t\nBefore: b"
    with pytest.raises(FeedbackError, match="no 'Step N' lines"):
        parse_record(bad)
    del bad["snapshot"]["render_start"]
    with pytest.raises(FeedbackError, match="render_start"):
        parse_record(bad)


def test_unlisted_steps_follow_the_prompt_style():
    intent = record("r/1.json", ACTIONS[:3], 1, "Yes\n- 2: useful")
    assert [(x.step, x.productive) for x in parse_record(intent).labels] == [(2, True)]
    assert [(x.step, x.productive, x.reason) for x in parse_record(intent, unlisted="negative").labels] == [
        (1, False, NOT_LISTED), (2, True, "useful"), (3, False, NOT_LISTED),
    ]
    reason = record("r/1.json", ACTIONS[:4], 1, "- Step 1: Yes, opens it\n- Step 2 - no, wanders\n- 3: maybe",
                    prompt=REASON)
    labels = parse_record(reason).labels
    assert [(x.step, x.productive, x.reason) for x in labels] == [
        (1, True, "opens it"), (2, False, "wanders"), (4, False, NOT_LISTED),  # 3: neither yes nor no
    ]
    assert [x.step for x in parse_record(reason, unlisted="none").labels] == [1, 2]
    action = record("r/1.json", ACTIONS[:3], 1, "- 3: open fridge", prompt=ACTION)
    assert [(x.step, x.productive, x.reason) for x in parse_record(action).labels] == [
        (3, False, "better action: open fridge"),
    ]


def test_contradicting_bullets_are_an_error():
    rec = record("r/1.json", ACTIONS[:4], 1, "- 1: yes, good\n- 1-2: no, bad", prompt=REASON)
    with pytest.raises(FeedbackError, match="step 1"):
        parse_record(rec)


def test_read_records_formats(tmp_path):
    a = record("r/1.json", ACTIONS[:2], 1, "- 1: a")
    b = record("r/2.json", ACTIONS[:2], 1, "- 2: b")
    (tmp_path / "x.jsonl").write_text(json.dumps(a) + "\n\n" + json.dumps(b) + "\nnot json\n")
    got = list(read_records(tmp_path / "x.jsonl"))
    assert [n for n, _ in got] == [1, 3, 4]
    assert got[1][1]["fname"] == "r/2.json"
    assert isinstance(got[2][1], FeedbackError)
    with bz2.open(tmp_path / "feedback.0.json.bz2", "wt") as f:
        json.dump(a, f, indent=2)  # the LFM code's files: one pretty-printed record
    assert [(n, v["fname"]) for n, v in read_records(tmp_path / "feedback.0.json.bz2")] == [(1, "r/1.json")]
    with gzip.open(tmp_path / "x.json.gz", "wt") as f:
        json.dump([a, b], f)
    assert [n for n, _ in read_records(tmp_path / "x.json.gz")] == [1, 2]


# --- the command ---------------------------------------------------------------------


def snapshot_of(item, response, *, start=1, count=None, prompt=INTENT, fname=None):
    """A record about `item` as the LFM code would write it (rollout step N = payload step N - 1)."""
    steps = ItemPayload.objects.get(item=item).data["steps"]
    count = len(steps) if count is None else count
    actions = [s["action"] for s in steps[start - 1 : start - 1 + count]]
    return record(fname or f"/rollouts/{item.external_id}.json.bz2", actions, start, response, prompt=prompt)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def payload_steps(item):
    return ItemPayload.objects.get(item=item).data["steps"]


@pytest.mark.django_db
def test_import_writes_feedback_into_payloads(tmp_path, capsys):
    project = make_project()
    items = make_items(project, count=2, n_steps=4, with_feedback=False)
    reviewer = add_member(project, Role.REVIEWER, "rev")
    Answer.objects.create(item=items[1], user=reviewer, data=full_answer(items[1]))
    answers_before = list(Answer.objects.values("id", "data"))
    path = write_jsonl(tmp_path / "fb.jsonl", [
        snapshot_of(items[0], "Yes\n- Step 1: opened the way\n- 3-4: reached the counter"),
        snapshot_of(items[1], "- 2: fine", prompt=REASON),
    ])
    call_command("import_llm_feedback", str(project.pk), str(path), "--source", "gpt-4")
    out = capsys.readouterr().out
    assert "2 records, 6 step labels (3 productive) on 2 items" in out
    s0 = payload_steps(items[0])
    assert [st.get("feedback") for st in s0] == [
        {"productive": True, "reason": "opened the way", "source": "gpt-4"},
        None,
        {"productive": True, "reason": "reached the counter", "source": "gpt-4"},
        {"productive": True, "reason": "reached the counter", "source": "gpt-4"},
    ]
    # the per-step yes/no prompt: "- 2: fine" has no yes/no, so no label there; unlisted steps are "no"
    s1 = payload_steps(items[1])
    assert [st["feedback"]["productive"] if st.get("feedback") else None for st in s1] == [False, None, False, False]
    assert list(Answer.objects.values("id", "data")) == answers_before
    assert AuditEvent.objects.filter(project=project, verb="llm_feedback.imported").count() == 1


@pytest.mark.django_db
def test_import_is_all_or_nothing_per_file(tmp_path, capsys):
    project = make_project()
    items = make_items(project, count=3, n_steps=3, with_feedback=False)
    before = {i.pk: payload_steps(i) for i in items}
    path = write_jsonl(tmp_path / "bad.jsonl", [
        snapshot_of(items[0], "- 1: good"),
        snapshot_of(items[1], "- 9: no such step"),  # outside the snapshot
        snapshot_of(items[2], "- 2: good", fname="/rollouts/unknown.json.bz2"),  # no such item
    ])
    with pytest.raises(CommandError, match="1 file"):
        call_command("import_llm_feedback", str(project.pk), str(path))
    err = capsys.readouterr().err
    assert "bad.jsonl: line 2: response: bullet on line 1 names step 9, outside the snapshot" in err
    assert "bad.jsonl: line 3: fname: no item of project" in err and "'unknown'" in err
    assert {i.pk: payload_steps(i) for i in items} == before  # line 1 was valid, but nothing was written


@pytest.mark.django_db
def test_good_file_imports_even_when_another_fails(tmp_path):
    project = make_project()
    items = make_items(project, count=2, n_steps=2, with_feedback=False)
    good = write_jsonl(tmp_path / "a.jsonl", [snapshot_of(items[0], "- 1: good")])
    bad = write_jsonl(tmp_path / "b.jsonl", [snapshot_of(items[1], "- 1: good", start=2, count=1)])
    with pytest.raises(CommandError):
        call_command("import_llm_feedback", str(project.pk), str(good), str(bad))
    assert payload_steps(items[0])[0]["feedback"]["productive"] is True
    assert all("feedback" not in s for s in payload_steps(items[1]))  # the action check caught the shift


@pytest.mark.django_db
def test_action_mismatch_names_the_numbering(tmp_path, capsys):
    project = make_project()
    (item,) = make_items(project, count=1, n_steps=3, with_feedback=False)
    rec = snapshot_of(item, "- 2: good")
    rec["snapshot"]["render"] = rec["snapshot"]["render"].replace("go to counter 1", "open the fridge")
    path = write_jsonl(tmp_path / "m.jsonl", [rec])
    with pytest.raises(CommandError):
        call_command("import_llm_feedback", str(project.pk), str(path))
    assert "step 2 shows the action 'open the fridge', but item 't1' has 'go to counter 1'" in capsys.readouterr().err
    call_command("import_llm_feedback", str(project.pk), str(path), "--no-check-actions")
    assert payload_steps(item)[1]["feedback"]["productive"] is True


@pytest.mark.django_db
def test_keep_existing_dry_run_and_pattern(tmp_path):
    project = make_project()
    (item,) = make_items(project, count=1, n_steps=3, with_feedback=True)
    original = payload_steps(item)
    path = write_jsonl(tmp_path / "k.jsonl", [snapshot_of(item, "- 1-3: all good", fname="/x/episode=t1/rollout.json")])
    call_command("import_llm_feedback", str(project.pk), str(path), "--pattern", r"episode=(\w+)", "--dry-run")
    assert payload_steps(item) == original
    call_command("import_llm_feedback", str(project.pk), str(path), "--pattern", r"episode=(\w+)", "--keep-existing")
    assert payload_steps(item) == original  # every step already had feedback
    call_command("import_llm_feedback", str(project.pk), str(path), "--pattern", r"episode=(\w+)")
    assert [s["feedback"] for s in payload_steps(item)] == [
        {"productive": True, "reason": "all good", "source": "llm"}
    ] * 3


@pytest.mark.django_db
def test_contradictions_across_records_are_errors(tmp_path, capsys):
    project = make_project()
    (item,) = make_items(project, count=1, n_steps=3, with_feedback=False)
    path = write_jsonl(tmp_path / "c.jsonl", [
        snapshot_of(item, "- 2: yes, good", prompt=REASON),
        snapshot_of(item, "- 2: no, bad", prompt=REASON),
    ])
    with pytest.raises(CommandError):
        call_command("import_llm_feedback", str(project.pk), str(path))
    err = capsys.readouterr().err
    assert "line 2: response: step 2 of 't1' is labelled not productive, but line 1 said the opposite" in err
    assert all("feedback" not in s for s in payload_steps(item))


@pytest.mark.django_db
def test_unknown_project_and_missing_file(tmp_path):
    with pytest.raises(CommandError, match="No project"):
        call_command("import_llm_feedback", "999", str(tmp_path / "x.jsonl"))
    project = make_project()
    with pytest.raises(CommandError, match="No such file"):
        call_command("import_llm_feedback", str(project.pk), str(tmp_path / "missing.jsonl"))
