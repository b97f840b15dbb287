"""The disagreement queue, the adjudication page, and accepting or rejecting answers (pages)."""

import re

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse

from annotation import answers
from annotation.models import Answer, AuditEvent, Final, Item, Role

from .factories import add_member, full_answer, make_items, make_project, make_user

# The factory's trajectories: the LLM says productive on even steps, so on step 1 "agree"
# means False and "disagree" means True.


def verdicts(*per_step, reason=""):
    return {"steps": [{"step": i, "verdict": v, "reason": reason} for i, v in enumerate(per_step)], "notes": ""}


@pytest.fixture
def setup(db):
    project = make_project(name="Adjudication", answers_per_item=3)
    a1, a2, a3 = (add_member(project, Role.ANNOTATOR, name) for name in ("ann-one", "ann-two", "ann-three"))
    reviewer = add_member(project, Role.REVIEWER, "rev")
    majority, tie, unanimous, open_, second_tie = make_items(project, count=5, n_steps=3)
    # majority on step 1: two say "not productive", one says "productive"
    answers.submit(majority, a1, verdicts("agree", "agree", "agree"))
    answers.submit(majority, a2, verdicts("agree", "disagree", "agree", reason="it opened the fridge"))
    answers.submit(majority, a3, verdicts("agree", "agree", "agree"))
    # a tie on step 1: one each way and one unsure
    answers.submit(tie, a1, verdicts("agree", "agree", "agree", reason="first-annotator-reason"))
    answers.submit(tie, a2, verdicts("agree", "disagree", "agree", reason="second-annotator-reason"))
    answers.submit(tie, a3, verdicts("agree", "unsure", "agree"))
    for u in (a1, a2, a3):
        answers.submit(unanimous, u, full_answer(unanimous))
    answers.submit(open_, a1, full_answer(open_))
    answers.submit(second_tie, a1, verdicts("agree", "agree", "disagree"))
    answers.submit(second_tie, a2, verdicts("agree", "agree", "agree"))
    answers.submit(second_tie, a3, verdicts("agree", "agree", "unsure"))
    items = {name: Item.objects.get(pk=i.pk) for name, i in
             [("majority", majority), ("tie", tie), ("unanimous", unanimous), ("open", open_),
              ("second_tie", second_tie)]}
    assert items["tie"].state == Item.State.DONE
    assert items["second_tie"].state == Item.State.DONE
    assert items["majority"].final.method == Final.Method.MAJORITY
    assert items["unanimous"].final.method == Final.Method.UNANIMOUS
    assert items["open"].state == Item.State.OPEN
    return {"project": project, "annotators": (a1, a2, a3), "reviewer": reviewer, "items": items}


def adjudicate_url(setup, name):
    return reverse("adjudicate", args=[setup["project"].pk, setup["items"][name].pk])


def decision_form(labels, reasons=None, notes=""):
    form = {"notes": notes}
    for i, label in enumerate(labels):
        if label is not None:
            form[f"label-{i}"] = label
        form[f"reason-{i}"] = (reasons or {}).get(i, "")
    return form


def checked(html, step):
    """The value of the checked radio of a step, or None."""
    m = re.search(rf'name="label-{step}" value="(yes|no)" checked', html)
    return m.group(1) if m else None


# --- the list ------------------------------------------------------------------------------------


def test_the_list_shows_ties_first_then_majorities(setup, client):
    client.force_login(setup["reviewer"])
    response = client.get(reverse("disagreement-list", args=[setup["project"].pk]))
    assert response.status_code == 200
    html = response.content.decode()
    items = setup["items"]
    rows = [int(pk) for pk in re.findall(r'<tr data-item="(\d+)"', html)]
    assert rows == [items["tie"].pk, items["second_tie"].pk, items["majority"].pk]
    assert items["unanimous"].pk not in rows and items["open"].pk not in rows
    assert [r["disagreeing"] for r in response.context["rows"]] == [1, 1, 1]
    assert [r["tied"] for r in response.context["rows"]] == [1, 1, 0]
    assert response.context["counts"] == {"tied": 2, "majority": 1}
    # item agreement is shown per row
    for row in response.context["rows"]:
        assert row["alpha"] is not None and row["alpha"] < 1
        assert row["percent"] == pytest.approx(2 / 3)
    assert "tie: needs a decision" in html and "majority" in html


def test_the_list_is_empty_without_disagreements(client, db):
    project = make_project(answers_per_item=2)
    reviewer = add_member(project, Role.REVIEWER)
    a, b = add_member(project, Role.ANNOTATOR), add_member(project, Role.ANNOTATOR)
    item = make_items(project, count=1)[0]
    answers.submit(item, a, full_answer(item))
    answers.submit(item, b, full_answer(item))
    client.force_login(reviewer)
    response = client.get(reverse("disagreement-list", args=[project.pk]))
    assert response.status_code == 200
    assert response.context["rows"] == []
    assert "No disagreements" in response.content.decode()


def test_with_one_answer_per_item_an_unsure_step_needs_a_reviewer(client, db):
    project = make_project(answers_per_item=1)
    reviewer = add_member(project, Role.REVIEWER)
    a = add_member(project, Role.ANNOTATOR)
    item = make_items(project, count=1)[0]
    answers.submit(item, a, verdicts("agree", "unsure", "agree"))
    assert Item.objects.get(pk=item.pk).state == Item.State.DONE
    client.force_login(reviewer)
    response = client.get(reverse("disagreement-list", args=[project.pk]))
    assert [r["item"].pk for r in response.context["rows"]] == [item.pk]


# --- the adjudication page --------------------------------------------------------------------------


def test_the_page_shows_every_answer_side_by_side_with_the_llm_and_model(setup, client):
    client.force_login(setup["reviewer"])
    response = client.get(adjudicate_url(setup, "tie"))
    assert response.status_code == 200
    html = response.content.decode()
    for name in ("ann-one", "ann-two", "ann-three"):
        assert html.count(f"<td>{name}</td>") == 3  # one row per step
    assert "first-annotator-reason" in html and "second-annotator-reason" in html
    assert "disagree" in html and "unsure" in html
    # the LLM's label and reason, and the model's probability
    assert "moves toward the goal" in html and "wanders" in html
    assert "Model (p = 0.20)" in html
    # every step is on the page with a decision
    steps = response.context["steps"]
    assert [s["index"] for s in steps] == [0, 1, 2]
    assert [s["method"] for s in steps] == ["unanimous", "tie", "unanimous"]
    # prefilled with the unanimous labels; the tied step is left for the reviewer
    assert [checked(html, i) for i in range(3)] == ["yes", None, "yes"]
    assert response.context["undecided"] == 1
    assert 'src="/static/annotation/adjudicate.js"' in html


def test_a_majority_item_is_prefilled_with_the_majority(setup, client):
    client.force_login(setup["reviewer"])
    html = client.get(adjudicate_url(setup, "majority")).content.decode()
    assert [checked(html, i) for i in range(3)] == ["yes", "no", "yes"]
    assert "majority: no" in html


def test_the_page_has_no_inline_script(setup, client):
    client.force_login(setup["reviewer"])
    html = client.get(adjudicate_url(setup, "tie")).content.decode()
    for tag in re.findall(r"<script[^>]*>", html):
        assert "src=" in tag, tag
    assert not re.search(r"\son[a-z]+=", html.split("<main", 1)[1]), "inline event handler on the page"


def test_adjudicating_sets_the_final_label_and_goes_to_the_next_disagreement(setup, client):
    reviewer, items, project = setup["reviewer"], setup["items"], setup["project"]
    client.force_login(reviewer)
    form = decision_form(["yes", "yes", "no"], reasons={1: "it did open the fridge"}, notes="checked the log")
    response = client.post(adjudicate_url(setup, "tie"), form)
    assert response.status_code == 302
    assert response["Location"] == adjudicate_url(setup, "second_tie")
    tie = Item.objects.get(pk=items["tie"].pk)
    assert tie.state == Item.State.FINAL
    final = tie.final
    assert final.method == Final.Method.ADJUDICATED
    assert final.decided_by == reviewer
    assert [s["label"] for s in final.data["steps"]] == [True, True, False]
    assert {s["method"] for s in final.data["steps"]} == {"adjudicated"}
    assert "it did open the fridge" in final.data["steps"][1]["reasons"]
    assert "checked the log" in final.data["notes"]
    event = AuditEvent.objects.get(verb="item.adjudicated", object_id=str(tie.pk))
    assert event.actor == reviewer and event.project == project
    assert event.after["method"] == "adjudicated"
    assert event.before is None  # a tie had no final label
    # the item left the queue
    listed = client.get(reverse("disagreement-list", args=[project.pk])).context["rows"]
    assert tie.pk not in [r["item"].pk for r in listed]
    # the annotators' answers are untouched
    assert Answer.objects.filter(item=tie, status=Answer.Status.SUBMITTED).count() == 3


def test_overruling_a_majority_is_audited_with_the_old_final(setup, client):
    reviewer, items = setup["reviewer"], setup["items"]
    client.force_login(reviewer)
    response = client.post(adjudicate_url(setup, "majority"), decision_form(["yes", "yes", "yes"]))
    assert response.status_code == 302
    final = Final.objects.get(item=items["majority"])
    assert final.method == Final.Method.ADJUDICATED
    assert final.data["steps"][1]["label"] is True
    event = AuditEvent.objects.get(verb="item.adjudicated", object_id=str(items["majority"].pk))
    assert event.before["method"] == "majority"


def test_the_last_disagreement_leads_back_to_the_list(setup, client):
    client.force_login(setup["reviewer"])
    for name in ("tie", "second_tie"):
        assert client.post(adjudicate_url(setup, name), decision_form(["yes", "no", "yes"])).status_code == 302
    response = client.post(adjudicate_url(setup, "majority"), decision_form(["yes", "no", "yes"]))
    assert response.status_code == 302
    assert response["Location"] == reverse("disagreement-list", args=[setup["project"].pk])
    messages = [str(m) for m in get_messages(response.wsgi_request)]
    assert any("No disagreements left" in m for m in messages)


def test_missing_labels_are_refused_with_the_input_kept(setup, client):
    client.force_login(setup["reviewer"])
    form = decision_form(["no", None, "yes"], reasons={0: "kept reason zero", 1: "kept reason one"},
                         notes="kept notes")
    response = client.post(adjudicate_url(setup, "tie"), form)
    assert response.status_code == 400
    html = response.content.decode()
    assert 'role="alert"' in html and "Not saved" in html
    assert "1 step(s) have no verdict: 1" in html
    # what the reviewer entered is still there, including a choice that differs from the prefill
    assert [checked(html, i) for i in range(3)] == ["no", None, "yes"]
    assert 'value="kept reason zero"' in html and 'value="kept reason one"' in html
    assert "kept notes</textarea>" in html
    assert [s["missing"] for s in response.context["steps"]] == [False, True, False]
    assert "adj-missing" in html
    # nothing was decided
    tie = Item.objects.get(pk=setup["items"]["tie"].pk)
    assert tie.state == Item.State.DONE
    assert not Final.objects.filter(item=tie).exists()
    assert not AuditEvent.objects.filter(verb="item.adjudicated").exists()


def test_an_unknown_label_value_counts_as_missing(setup, client):
    client.force_login(setup["reviewer"])
    response = client.post(adjudicate_url(setup, "tie"), decision_form(["yes", "maybe", "yes"]))
    assert response.status_code == 400
    assert not Final.objects.filter(item=setup["items"]["tie"]).exists()


def test_a_second_visit_is_prefilled_with_the_adjudicated_labels(setup, client):
    client.force_login(setup["reviewer"])
    client.post(adjudicate_url(setup, "majority"), decision_form(["no", "yes", "no"]))
    response = client.get(adjudicate_url(setup, "majority"))
    assert response.status_code == 200
    html = response.content.decode()
    assert [checked(html, i) for i in range(3)] == ["no", "yes", "no"]
    assert "by rev" in html


def test_an_item_still_collecting_answers_cannot_be_decided(setup, client):
    client.force_login(setup["reviewer"])
    open_ = setup["items"]["open"]
    for response in (client.get(adjudicate_url(setup, "open")),
                     client.post(adjudicate_url(setup, "open"), decision_form(["yes", "yes", "yes"]))):
        assert response.status_code == 302
        assert response["Location"] == reverse("item-detail", args=[setup["project"].pk, open_.pk])
    assert Item.objects.get(pk=open_.pk).state == Item.State.OPEN
    assert not Final.objects.filter(item=open_).exists()


def test_an_item_of_another_project_is_not_found(setup, client):
    other = make_project(name="Other", answers_per_item=1)
    foreign = make_items(other, count=1)[0]
    client.force_login(setup["reviewer"])
    response = client.get(reverse("adjudicate", args=[setup["project"].pk, foreign.pk]))
    assert response.status_code == 404


# --- who may ---------------------------------------------------------------------------------------


def test_annotators_never_see_other_answers(setup, client):
    a1 = setup["annotators"][0]
    client.force_login(a1)
    project = setup["project"]
    for response in (
        client.get(reverse("disagreement-list", args=[project.pk])),
        client.get(adjudicate_url(setup, "tie")),
        client.post(adjudicate_url(setup, "tie"), decision_form(["yes", "yes", "yes"])),
    ):
        assert response.status_code == 403
        assert b"second-annotator-reason" not in response.content
    assert not Final.objects.filter(item=setup["items"]["tie"]).exists()


@pytest.mark.parametrize("role", [Role.VIEWER, Role.ANNOTATOR])
def test_roles_without_review_get_403(setup, client, role):
    client.force_login(add_member(setup["project"], role))
    assert client.get(adjudicate_url(setup, "tie")).status_code == 403
    answer = Answer.objects.filter(item=setup["items"]["tie"]).first()
    response = client.post(reverse("answer-review", args=[setup["project"].pk, answer.pk]), {"decision": "reject"})
    assert response.status_code == 403
    assert Answer.objects.get(pk=answer.pk).status == Answer.Status.SUBMITTED


def test_non_members_get_404(setup, client):
    client.force_login(make_user("stranger"))
    project = setup["project"]
    assert client.get(reverse("disagreement-list", args=[project.pk])).status_code == 404
    assert client.get(adjudicate_url(setup, "tie")).status_code == 404
    answer = Answer.objects.filter(item=setup["items"]["tie"]).first()
    assert client.post(reverse("answer-review", args=[project.pk, answer.pk]),
                       {"decision": "accept"}).status_code == 404


def test_a_manager_may_adjudicate(setup, client):
    manager = add_member(setup["project"], Role.MANAGER)
    client.force_login(manager)
    assert client.post(adjudicate_url(setup, "tie"), decision_form(["yes", "no", "yes"])).status_code == 302
    assert Final.objects.get(item=setup["items"]["tie"]).decided_by == manager


# --- accepting and rejecting answers ------------------------------------------------------------------


def review_url(project, answer):
    return reverse("answer-review", args=[project.pk, answer.pk])


def test_accepting_an_answer(setup, client):
    reviewer, project = setup["reviewer"], setup["project"]
    unanimous = setup["items"]["unanimous"]
    answer = Answer.objects.get(item=unanimous, user=setup["annotators"][0])
    client.force_login(reviewer)
    response = client.post(review_url(project, answer), {"decision": "accept"})
    assert response.status_code == 302
    assert response["Location"] == reverse("item-detail", args=[project.pk, unanimous.pk])
    answer.refresh_from_db()
    assert answer.status == Answer.Status.SUBMITTED
    assert answer.reviewed_by == reviewer
    assert AuditEvent.objects.filter(verb="answer.accepted", object_id=str(answer.pk), actor=reviewer).exists()
    assert Item.objects.get(pk=unanimous.pk).state == Item.State.FINAL
    messages = [str(m) for m in get_messages(response.wsgi_request)]
    assert any("Accepted" in m for m in messages)


def test_rejecting_an_answer_reopens_the_item(setup, client):
    reviewer, project = setup["reviewer"], setup["project"]
    unanimous = setup["items"]["unanimous"]
    answer = Answer.objects.get(item=unanimous, user=setup["annotators"][1])
    client.force_login(reviewer)
    response = client.post(review_url(project, answer), {"decision": "reject", "comment": "random clicks"},
                           follow=True)
    assert response.status_code == 200
    assert response.redirect_chain[-1][0] == reverse("item-detail", args=[project.pk, unanimous.pk])
    assert "back in the queue for another answer" in response.content.decode()
    answer.refresh_from_db()
    assert answer.status == Answer.Status.REJECTED
    item = Item.objects.get(pk=unanimous.pk)
    assert item.state == Item.State.OPEN and item.answer_count == 2
    event = AuditEvent.objects.get(verb="answer.rejected", object_id=str(answer.pk))
    assert event.after == {"status": "rejected", "comment": "random clicks"}
    # Deciding again on a rejected answer is refused with a message, not an error page.
    again = client.post(review_url(project, answer), {"decision": "accept"}, follow=True)
    assert again.status_code == 200
    assert "Only submitted answers" in again.content.decode()
    answer.refresh_from_db()
    assert answer.status == Answer.Status.REJECTED


def test_answer_review_accepts_only_post_and_a_known_decision(setup, client):
    client.force_login(setup["reviewer"])
    answer = Answer.objects.filter(item=setup["items"]["tie"]).first()
    url = review_url(setup["project"], answer)
    assert client.get(url).status_code == 405
    assert client.post(url, {"decision": "maybe"}).status_code == 400
    assert client.post(url, {}).status_code == 400
    answer.refresh_from_db()
    assert answer.status == Answer.Status.SUBMITTED and answer.reviewed_by is None


def test_answer_review_of_another_projects_answer_is_not_found(setup, client):
    other = make_project(name="Other", answers_per_item=1)
    annotator = add_member(other, Role.ANNOTATOR)
    item = make_items(other, count=1)[0]
    foreign = answers.submit(item, annotator, full_answer(item)).answer
    client.force_login(setup["reviewer"])
    assert client.post(review_url(setup["project"], foreign), {"decision": "reject"}).status_code == 404
    assert Answer.objects.get(pk=foreign.pk).status == Answer.Status.SUBMITTED


def test_the_item_page_posts_to_answer_review(setup, client):
    client.force_login(setup["reviewer"])
    item = setup["items"]["unanimous"]
    html = client.get(reverse("item-detail", args=[setup["project"].pk, item.pk])).content.decode()
    for answer in Answer.objects.filter(item=item):
        assert f'action="{review_url(setup["project"], answer)}"' in html
