import pytest

from models_ml.lfm import StepExample, example_from_row, fit_text, load_tokenizer, render, steps_from_trajectory
from models_ml.lfm.text import clip


def test_render_is_the_papers_format_without_context():
    e = StepExample(task="heat an egg", before="You see a microwave 1.", action="open microwave 1",
                    after="You open the microwave 1.")
    assert render(e, context_steps=0) == (
        "Task: heat an egg\n"
        "Before: You see a microwave 1.\n"
        "Action: open microwave 1\n"
        "After: You open the microwave 1.\n"
        "Question: was this helpful?\n"
        "Answer:"
    )


def test_render_shows_only_the_most_recent_context():
    e = StepExample(task="t", before="b", action="a", after="x",
                    context=[("go to desk 1", "You arrive."), ("look", "You see a pen."), ("take pen", "Got it.")])
    text = render(e, context_steps=2)
    assert "go to desk 1" not in text
    assert text.splitlines()[1:3] == ["Earlier: look -> You see a pen.", "Earlier: take pen -> Got it."]
    assert text.splitlines()[3] == "Before: b"


def test_clip_keeps_start_and_end():
    text = "start " + "x" * 500 + " end"
    out = clip(text, 60)
    assert len(out) <= 62 and out.startswith("start") and out.endswith("end") and "…" in out
    assert clip("a\n  b", 10) == "a b"


PAYLOAD = {
    "id": "traj-7",
    "instruction": "put a mug in the sink",
    "steps": [
        {"observation": "You are in a kitchen.", "action": "go to counter 1", "result": "You arrive at counter 1.",
         "feedback": {"productive": True, "reason": "moves towards the mug"}},
        {"observation": "You arrive at counter 1.", "action": "look"},
        {"observation": "On the counter you see a mug.", "action": "take mug",
         "feedback": {"productive": True, "reason": "has the mug"}},
    ],
}


def test_steps_from_trajectory_for_scoring():
    steps = steps_from_trajectory(PAYLOAD)
    assert [s.key for s in steps] == ["traj-7#0", "traj-7#1", "traj-7#2"]
    assert all(s.label is None for s in steps)
    # no result: "after" is the next observation; the last step has nothing after it
    assert steps[1].after == "On the counter you see a mug."
    assert steps[2].after == ""
    assert steps[2].context == [("go to counter 1", "You arrive at counter 1."), ("look", "On the counter you see a mug.")]
    assert steps[0].context == [] and steps[0].task == "put a mug in the sink"


def test_steps_from_trajectory_labels_human_over_llm():
    steps = steps_from_trajectory(PAYLOAD, labels={0: False, 1: None}, use_llm_feedback=True, item_key="i")
    assert (steps[0].label, steps[0].source) == (False, "human")
    assert (steps[1].label, steps[1].source) == (None, "human")
    assert (steps[2].label, steps[2].source, steps[2].reason) == (True, "llm", "has the mug")
    assert steps[2].key == "i#2"


def test_example_from_export_row():
    row = {"task": "t", "step": 3, "action": "a", "before": "b", "after": "c", "label": False,
           "feedback": ["pointless"], "item_id": 12}
    e = example_from_row(row)
    assert (e.label, e.key, e.reason, e.context) == (False, "12#3", "pointless", [])


def test_bad_source_rejected():
    with pytest.raises(ValueError):
        StepExample(task="t", before="b", action="a", after="c", source="robot")


def test_fit_text_keeps_the_step_in_the_window(tiny_bert):
    tok = load_tokenizer(tiny_bert)
    e = StepExample(task="find the key " * 30, before="You see many things. " * 80, action="take key 1",
                    after="You pick up the key. " * 60, context=[("go to shelf", "You arrive. " * 30)] * 3)
    text = fit_text(e, tok, max_length=128, context_steps=2)
    assert len(tok(text)["input_ids"]) <= 128
    assert "Action: take key 1" in text and text.endswith("Question: was this helpful?\nAnswer:")
    short = StepExample(task="t", before="b", action="a", after="c", context=[("x", "y")])
    assert fit_text(short, tok, 128, 2) == render(short, 2)
