"""Krippendorff's alpha, the per-unit final-label rule, and the final label of an item through submits."""

import itertools
import random

import pytest
from django.urls import reverse

from annotation import answers
from annotation.agreement import AlphaAccumulator, krippendorff_alpha, percent_agreement, resolve_unit
from annotation.answers import AnswerError
from annotation.models import Answer, Final, Item, Role
from annotation.queue import claimable
from annotation.stats import item_agreement, project_agreement

from .factories import add_member, full_answer, make_items, make_project

# --- alpha against published values ------------------------------------------------------

N = None
# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: four observers,
# twelve units, nominal values with missing data. Published: alpha = 0.743.
KRIPPENDORFF_OBSERVERS = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, N, N, N],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, N, 3],
    [N, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, N],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, N],
]
# Same paper, section A: two observers, ten units, binary data. Published: alpha = 0.095.
KRIPPENDORFF_BINARY = [
    [0, 1, 0, 0, 0, 0, 0, 0, 1, 0],
    [1, 1, 1, 0, 0, 1, 0, 0, 0, 0],
]


def units_from_observers(observers):
    return [list(unit) for unit in zip(*observers)]


def reference_alpha(units):
    """Nominal alpha straight from the definition, pair by pair (slow, independent of the accumulator)."""
    pairable = [[v for v in u if v is not None] for u in units]
    pairable = [u for u in pairable if len(u) >= 2]
    values = [v for u in pairable for v in u]
    n = len(values)
    d_o = sum(
        sum(1 for i, j in itertools.permutations(range(len(u)), 2) if u[i] != u[j]) / (len(u) - 1) for u in pairable
    ) / n
    d_e = sum(1 for i, j in itertools.permutations(range(n), 2) if values[i] != values[j]) / (n * (n - 1))
    return 1 - d_o / d_e


def test_alpha_matches_krippendorffs_nominal_example_with_missing_values():
    units = units_from_observers(KRIPPENDORFF_OBSERVERS)
    alpha = krippendorff_alpha(units)
    assert alpha == pytest.approx(0.743, abs=5e-4)
    assert alpha == pytest.approx(reference_alpha(units), abs=1e-12)


def test_alpha_matches_krippendorffs_binary_example():
    alpha = krippendorff_alpha(units_from_observers(KRIPPENDORFF_BINARY))
    assert alpha == pytest.approx(0.095, abs=5e-4)


def test_alpha_of_perfect_agreement_is_one():
    assert krippendorff_alpha([[True, True], [False, False], [True, True, True], [False, None, False]]) == 1.0


def test_alpha_of_systematic_disagreement_is_negative():
    # Two coders who always say the opposite: alpha = 1 - 7 * 8 / 32 = -0.75.
    alpha = krippendorff_alpha([[True, False], [False, True], [True, False], [False, True]])
    assert alpha == pytest.approx(-0.75)
    assert alpha < 0


def test_alpha_ignores_units_with_fewer_than_two_labels():
    base = [[True, False], [True, True], [False, False]]
    assert krippendorff_alpha(base + [[True], [None, False], [None, None]]) == pytest.approx(krippendorff_alpha(base))


def test_alpha_undefined_without_pairs_and_one_for_a_single_shared_value():
    assert krippendorff_alpha([]) is None
    assert krippendorff_alpha([[True], [None, False]]) is None
    assert krippendorff_alpha([[True, True], [True, True, True]]) == 1.0


def test_streaming_accumulator_equals_the_definition_on_random_data():
    rng = random.Random(7)
    for _ in range(20):
        units = [[rng.choice([True, False, None]) for _ in range(rng.randint(1, 5))] for _ in range(30)]
        if sum(len([v for v in u if v is not None]) >= 2 for u in units) < 3:
            continue
        values = {v for u in units for v in u if v is not None}
        acc = AlphaAccumulator()
        for u in units:
            acc.add_unit(u)
        if len(values) < 2:
            continue
        assert acc.alpha() == pytest.approx(reference_alpha(units), abs=1e-9)


def test_percent_agreement():
    assert percent_agreement([[True, True], [True, False], [False, None, False], [True]]) == pytest.approx(2 / 3)
    assert percent_agreement([[True], [None, None]]) is None


# --- resolve_unit ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "labels, expected",
    [
        ([True, True, True], (True, "unanimous")),
        ([False, False], (False, "unanimous")),
        ([True, True, False], (True, "majority")),
        ([False, True, False, False], (False, "majority")),
        ([True, False], (None, None)),  # tie
        ([True, True, False, False], (None, None)),  # tie
        ([True, None, False], (None, None)),  # unsure does not break a tie
        ([True, None, None], (True, "unanimous")),  # unsure is no vote
        ([None, False, False], (False, "unanimous")),
        ([True, True, None, False], (True, "majority")),
        ([None, None, None], (None, None)),
        ([], (None, None)),
    ],
)
def test_resolve_unit(labels, expected):
    assert resolve_unit(labels) == expected


def test_resolve_unit_needs_a_strict_majority_of_the_votes():
    # 2 of 5 is the most common value but not a majority of the votes.
    assert resolve_unit(["a", "a", "b", "c", "d"]) == (None, None)
    assert resolve_unit(["a", "a", "a", "b", "c"]) == ("a", "majority")


# --- the final label of an item, through answers.submit with N = 3 ------------------------------

def verdicts(*per_step):
    """An answer from one verdict per step."""
    return {"steps": [{"step": i, "verdict": v} for i, v in enumerate(per_step)], "notes": ""}


@pytest.fixture
def three(db):
    project = make_project(answers_per_item=3)
    users = [add_member(project, Role.ANNOTATOR) for _ in range(4)]
    reviewer = add_member(project, Role.REVIEWER)
    item = make_items(project, count=1, n_steps=3)[0]
    return project, users, reviewer, item


def refresh(item):
    return Item.objects.get(pk=item.pk)


def test_unanimous_answers_make_a_unanimous_final(three):
    project, users, _, item = three
    for u in users[:2]:
        answers.submit(item, u, full_answer(item, "agree"))
        assert refresh(item).state == Item.State.OPEN
        assert not Final.objects.filter(item=item).exists()
    answers.submit(item, users[2], full_answer(item, "agree"))
    item = refresh(item)
    assert item.state == Item.State.FINAL
    final = item.final
    assert final.method == Final.Method.UNANIMOUS
    assert final.decided_by is None
    # The factory's LLM feedback says productive on even steps.
    assert [s["label"] for s in final.data["steps"]] == [True, False, True]
    assert {s["method"] for s in final.data["steps"]} == {"unanimous"}


def test_a_majority_on_one_step_makes_a_majority_final(three):
    project, users, _, item = three
    answers.submit(item, users[0], verdicts("agree", "agree", "agree"))
    answers.submit(item, users[1], verdicts("agree", "disagree", "agree"))
    answers.submit(item, users[2], verdicts("agree", "agree", "agree"))
    item = refresh(item)
    assert item.state == Item.State.FINAL
    assert item.final.method == Final.Method.MAJORITY
    steps = item.final.data["steps"]
    assert [s["label"] for s in steps] == [True, False, True]
    assert [s["method"] for s in steps] == ["unanimous", "majority", "unanimous"]


def test_a_tie_leaves_the_item_done_without_a_final_and_in_the_disagreement_list(three, client):
    project, users, reviewer, item = three
    answers.submit(item, users[0], verdicts("agree", "agree", "agree"))
    answers.submit(item, users[1], verdicts("agree", "disagree", "agree"))
    answers.submit(item, users[2], verdicts("agree", "unsure", "agree"))  # 1 : 1 on step 1
    item = refresh(item)
    assert item.state == Item.State.DONE
    assert not Final.objects.filter(item=item).exists()
    # A DONE item is out of the queue even though nobody holds it.
    assert not claimable(project, users[3]).filter(pk=item.pk).exists()
    client.force_login(reviewer)
    response = client.get(reverse("disagreement-list", args=[project.pk]))
    assert response.status_code == 200
    assert reverse("adjudicate", args=[project.pk, item.pk]) in response.content.decode()


def test_an_edit_after_a_tie_can_settle_it(three):
    project, users, _, item = three
    answers.submit(item, users[0], verdicts("agree", "agree", "agree"))
    answers.submit(item, users[1], verdicts("agree", "disagree", "agree"))
    answers.submit(item, users[2], verdicts("agree", "unsure", "agree"))
    assert refresh(item).state == Item.State.DONE
    result = answers.submit(item, users[2], verdicts("agree", "disagree", "agree"))
    assert result.created is False
    item = refresh(item)
    assert item.state == Item.State.FINAL
    assert item.final.method == Final.Method.MAJORITY
    assert item.final.data["steps"][1]["label"] is True  # "disagree" with the LLM's "no"


def tie(three):
    project, users, reviewer, item = three
    answers.submit(item, users[0], verdicts("agree", "agree", "agree"))
    answers.submit(item, users[1], verdicts("agree", "disagree", "agree"))
    answers.submit(item, users[2], verdicts("agree", "unsure", "agree"))
    return refresh(item)


def decision(labels):
    return {"steps": [{"step": i, "label": v, "reason": "reviewer"} for i, v in enumerate(labels)], "notes": "decided"}


def test_adjudication_wins_over_later_edits(three):
    project, users, reviewer, item = three
    item = tie(three)
    answers.adjudicate(item, reviewer, decision([False, True, False]))
    item = refresh(item)
    assert item.state == Item.State.FINAL
    assert item.final.method == Final.Method.ADJUDICATED
    assert item.final.decided_by == reviewer
    # An annotator changing their answer afterwards is refused and changes nothing.
    with pytest.raises(AnswerError) as err:
        answers.submit(item, users[0], verdicts("disagree", "disagree", "disagree"))
    assert err.value.status == 409
    assert Answer.objects.get(item=item, user=users[0]).data["steps"][0]["verdict"] == "agree"
    # Resubmitting the same answer is a harmless double submit.
    assert answers.submit(item, users[1], verdicts("agree", "disagree", "agree")).created is False
    item = refresh(item)
    assert item.final.method == Final.Method.ADJUDICATED
    assert [s["label"] for s in item.final.data["steps"]] == [False, True, False]


def test_adjudication_survives_a_rejected_answer(three):
    project, users, reviewer, item = three
    item = tie(three)
    answers.adjudicate(item, reviewer, decision([True, True, True]))
    answers.review_answer(Answer.objects.get(item=item, user=users[1]), reviewer, accept=False)
    item = refresh(item)
    assert item.answer_count == 2
    assert item.state == Item.State.FINAL
    assert item.final.method == Final.Method.ADJUDICATED


def test_rejecting_an_answer_reopens_the_item(three):
    project, users, reviewer, item = three
    for u in users[:3]:
        answers.submit(item, u, full_answer(item, "agree"))
    assert refresh(item).state == Item.State.FINAL
    rejected = Answer.objects.get(item=item, user=users[0])
    answers.review_answer(rejected, reviewer, accept=False, comment="did not read the task")
    item = refresh(item)
    assert item.state == Item.State.OPEN
    assert item.answer_count == 2
    assert not Final.objects.filter(item=item).exists()
    rejected.refresh_from_db()
    assert rejected.status == Answer.Status.REJECTED
    assert rejected.reviewed_by == reviewer
    # Back in the queue for someone new, never for the annotator whose answer was rejected.
    assert claimable(project, users[3]).filter(pk=item.pk).exists()
    assert not claimable(project, users[0]).filter(pk=item.pk).exists()
    answers.submit(item, users[3], full_answer(item, "agree"))
    item = refresh(item)
    assert item.state == Item.State.FINAL
    assert item.final.method == Final.Method.UNANIMOUS


def test_accepting_an_answer_keeps_the_final(three):
    project, users, reviewer, item = three
    for u in users[:3]:
        answers.submit(item, u, full_answer(item, "agree"))
    accepted = answers.review_answer(Answer.objects.get(item=item, user=users[0]), reviewer, accept=True)
    assert accepted.status == Answer.Status.SUBMITTED
    assert accepted.reviewed_by == reviewer
    item = refresh(item)
    assert item.state == Item.State.FINAL and item.answer_count == 3
    second = Answer.objects.get(item=item, user=users[1])
    answers.review_answer(second, reviewer, accept=False)
    # A second decision on a rejected answer is refused.
    with pytest.raises(AnswerError) as err:
        answers.review_answer(second, reviewer, accept=True)
    assert err.value.status == 409
    assert Answer.objects.get(pk=second.pk).status == Answer.Status.REJECTED


def test_item_and_project_agreement_from_answers(three):
    project, users, _, item = three
    answers.submit(item, users[0], verdicts("agree", "agree", "agree"))
    answers.submit(item, users[1], verdicts("agree", "disagree", "agree"))
    answers.submit(item, users[2], verdicts("agree", "agree", "agree"))
    # One unit per step; the LLM said "not productive" on step 1, so "disagree" there means True.
    labels = [[True, True, True], [False, True, False], [True, True, True]]
    expected = krippendorff_alpha(labels)
    assert item_agreement(refresh(item))["alpha"] == pytest.approx(expected)
    agreement = project_agreement(project)
    assert agreement["alpha"] == pytest.approx(expected)
    assert agreement["items"] == 1
    assert agreement["units"] == 3
    assert agreement["percent"] == pytest.approx(2 / 3)
