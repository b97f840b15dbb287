"""The review page: queue, page content, drafts, submit, skip, permissions."""

from datetime import timedelta

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape

from annotation import answers, queue
from annotation.kinds.lfm import LFM
from annotation.models import Answer, Item, Lease, Role
from annotation.views.review import feedback_from_form

from .factories import add_member, full_answer, make_items, make_project


def url(name, project, item=None):
    return reverse(name, args=[project.pk] if item is None else [project.pk, item.pk])


@pytest.fixture
def ann_client(client, annotator):
    client.force_login(annotator)
    return client


def claim(client, project) -> Item:
    r = client.get(url("review-next", project))
    assert r.status_code == 302, r.status_code
    item_id = int(r.url.rstrip("/").rsplit("/", 1)[1])
    return Item.objects.get(pk=item_id)


def moved_on_to(url_, project, user):
    """Where a submit, skip or lost item sends the reviewer: straight to the item now claimed for them
    (their one lease), or to review-next when nothing is left."""
    lease = Lease.objects.filter(user=user, item__project=project).first()
    assert url_ == (url("review-item", project, lease.item) if lease else url("review-next", project)), url_
    return lease.item if lease else None


def form_for(item, verdicts, reasons=None, notes="", time_spent_ms="1500"):
    """POST data as the page's form sends it: `verdicts` maps step -> verdict ('' for none)."""
    data = {"notes": notes, "time_spent_ms": time_spent_ms}
    for i in range(item.step_count):
        data[f"step-{i}-verdict"] = verdicts.get(i, "")
        data[f"step-{i}-label"] = ""
        data[f"step-{i}-reason"] = (reasons or {}).get(i, "")
    return data


# --- next -------------------------------------------------------------------------------


def test_next_claims_the_best_item_and_redirects(ann_client, project, annotator, items):
    r = ann_client.get(url("review-next", project))
    assert r.status_code == 302
    assert r.url == url("review-item", project, items[0])
    lease = Lease.objects.get(user=annotator)
    assert lease.item == items[0] and lease.expires_at > timezone.now()
    # asking again resumes the same item instead of taking a second one
    assert ann_client.get(url("review-next", project)).url == url("review-item", project, items[0])
    assert Lease.objects.filter(user=annotator).count() == 1


def test_next_with_nothing_left_shows_a_friendly_page(ann_client, project):
    r = ann_client.get(url("review-next", project))
    assert r.status_code == 200
    assert b"Nothing left to review" in r.content
    assert url("project-dashboard", project).encode() in r.content


def test_next_skips_items_with_all_their_answers(ann_client, project, items):
    other = add_member(project, Role.ANNOTATOR)
    answers.submit(items[0], other, full_answer(items[0]))
    assert claim(ann_client, project) == items[1]


# --- the page ---------------------------------------------------------------------------


def test_page_shows_task_steps_labels_predictions_and_help(ann_client, project):
    item = make_items(project, count=1, n_steps=4)[0]
    claim(ann_client, project)
    r = ann_client.get(url("review-item", project, item))
    assert r.status_code == 200
    html = r.content.decode()
    assert "Put the apple in the fridge" in html and "alfworld" in html and "success" in html
    for i in range(4):
        assert f'id="step-{i}"' in html
        assert f"go to counter {i}" in html
        assert f"You arrive at counter {i}." in html
        for field in ("verdict", "label", "reason"):
            assert f'name="step-{i}-{field}"' in html
    # the label under review and its reason, the model's probability and explanation
    assert 'data-step="0" data-shown="yes"' in html and 'data-step="1" data-shown="no"' in html
    assert "step 0 moves toward the goal" in html and "wanders" in html
    assert "P(productive) 0.20" in html and "80% sure" in html and "counter" in html
    # the help overlay lists the kind's keys
    for key, what in LFM.keyboard:
        assert escape(what) in html and escape(key) in html
    assert 'id="review-help"' in html
    assert "step <span data-progress-pos>1</span> of 4, <span data-progress-done>0</span> with verdicts" in html
    assert "annotation/review.js" in html and "annotation/review.css" in html
    assert 'name="time_spent_ms"' in html
    assert f'action="{url("review-submit", project, item)}"' in html
    assert f'action="{url("review-skip", project, item)}"' in html


def test_page_shows_the_labels_of_the_model_when_there_is_no_llm_feedback(ann_client, project):
    item = make_items(project, count=1, n_steps=3, with_feedback=False)[0]
    claim(ann_client, project)
    html = ann_client.get(url("review-item", project, item)).content.decode()
    # probabilities 0.2, 0.5, 0.8: the shown label is p >= 0.5
    assert 'data-step="0" data-shown="no"' in html
    assert 'data-step="1" data-shown="yes"' in html
    assert 'data-step="2" data-shown="yes"' in html
    assert "Model</span> <span class=\"badge" in html


def test_page_without_any_label_asks_for_one(ann_client, project):
    item = make_items(project, count=1, n_steps=2, with_feedback=False, with_prediction=False)[0]
    claim(ann_client, project)
    html = ann_client.get(url("review-item", project, item)).content.decode()
    assert 'data-step="0" data-shown=""' in html
    assert "no label shown" in html
    assert "P(productive)" not in html


def test_page_is_prefilled_from_the_draft(ann_client, project, annotator):
    item = make_items(project, count=1, n_steps=3)[0]
    claim(ann_client, project)
    answers.save_draft(item, annotator, {"steps": [{"step": 1, "verdict": "disagree", "reason": "it did move"}],
                                         "notes": "half done"}, 4000)
    html = ann_client.get(url("review-item", project, item)).content.decode()
    assert 'name="step-1-verdict" value="disagree" checked' in html
    assert 'name="step-1-label" value="yes" checked' in html  # the corrected label of a "no" step
    assert ">it did move</textarea>" in html and ">half done</textarea>" in html
    assert 'data-time-spent-ms="4000"' in html
    assert "<span data-progress-done>1</span> with verdicts" in html
    assert "draft saved" in html


def test_page_escapes_trajectory_text(ann_client, project):
    item = make_items(project, count=1, n_steps=1, instruction="<script>alert(1)</script>")[0]
    claim(ann_client, project)
    html = ann_client.get(url("review-item", project, item)).content.decode()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_page_renews_the_lease(ann_client, project, annotator, items):
    item = claim(ann_client, project)
    soon = timezone.now() + timedelta(minutes=1)
    Lease.objects.filter(item=item, user=annotator).update(expires_at=soon)
    assert ann_client.get(url("review-item", project, item)).status_code == 200
    assert Lease.objects.get(item=item, user=annotator).expires_at > soon + timedelta(minutes=20)


# --- access -----------------------------------------------------------------------------


def test_a_user_without_a_lease_is_sent_to_the_queue(ann_client, project, annotator, items):
    r = ann_client.get(url("review-item", project, items[2]))
    assert r.status_code == 302 and moved_on_to(r.url, project, annotator) == items[0]
    assert any("no longer hold" in str(m) for m in get_messages(r.wsgi_request))


def test_an_expired_lease_with_no_draft_is_sent_to_the_queue(ann_client, project, annotator, items):
    item = claim(ann_client, project)
    Lease.objects.filter(user=annotator).update(expires_at=timezone.now() - timedelta(seconds=1))
    r = ann_client.post(url("review-submit", project, item), form_for(item, {i: "agree" for i in range(3)}))
    assert r.status_code == 302 and not Answer.objects.filter(item=item).exists()
    # sent on to the queue's best item, which is this one again, now under a new lease
    assert moved_on_to(r.url, project, annotator) == item
    Lease.objects.filter(user=annotator).update(expires_at=timezone.now() - timedelta(seconds=1))
    r = ann_client.get(url("review-item", project, item))
    assert r.status_code == 302 and moved_on_to(r.url, project, annotator) == item
    assert any("no longer hold" in str(m) for m in get_messages(r.wsgi_request))


def test_an_expired_lease_with_a_draft_still_opens(ann_client, project, annotator, items):
    item = claim(ann_client, project)
    answers.save_draft(item, annotator, {"steps": [{"step": 0, "verdict": "agree"}]})
    Lease.objects.filter(user=annotator).update(expires_at=timezone.now() - timedelta(seconds=1))
    r = ann_client.get(url("review-item", project, item))
    assert r.status_code == 200
    assert b"Your hold on this item has expired" in r.content


def test_an_item_of_another_project_is_404(ann_client, project, items):
    other = make_project("Other")
    foreign = make_items(other, count=1)[0]
    assert ann_client.get(f"/projects/{project.pk}/review/{foreign.pk}/").status_code == 404


@pytest.mark.parametrize("name,method", [
    ("review-next", "get"), ("review-item", "get"), ("review-draft", "post"), ("review-submit", "post"),
    ("review-skip", "post"),
])
def test_a_viewer_gets_403_and_a_non_member_404(client, project, viewer, outsider, items, name, method):
    target = url(name, project) if name == "review-next" else url(name, project, items[0])
    client.force_login(viewer)
    assert getattr(client, method)(target).status_code == 403
    client.force_login(outsider)
    assert getattr(client, method)(target).status_code == 404
    assert not Lease.objects.exists() and not Answer.objects.exists()


def test_anonymous_users_go_to_the_login_page(client, project, items):
    r = client.get(url("review-next", project))
    assert r.status_code == 302 and r.url.startswith(reverse("login"))


# --- drafts -----------------------------------------------------------------------------


def test_draft_saves_and_renews_the_lease(ann_client, project, annotator, items):
    item = claim(ann_client, project)
    soon = timezone.now() + timedelta(minutes=1)
    Lease.objects.filter(item=item, user=annotator).update(expires_at=soon)
    data = form_for(item, {0: "agree", 1: "unsure"}, {1: "hard to tell"}, notes="so far", time_spent_ms="2500")
    r = ann_client.post(url("review-draft", project, item), data, HTTP_ACCEPT="application/json")
    assert r.status_code == 200 and r.json()["ok"] is True
    answer = Answer.objects.get(item=item, user=annotator)
    assert answer.status == Answer.Status.DRAFT
    assert answer.data == {
        "steps": [
            {"step": 0, "verdict": "agree", "label": True, "reason": ""},
            {"step": 1, "verdict": "unsure", "label": None, "reason": "hard to tell"},
        ],
        "notes": "so far",
    }
    assert answer.time_spent_ms == 2500
    assert Lease.objects.get(item=item, user=annotator).expires_at > soon + timedelta(minutes=20)


def test_draft_without_javascript_redirects_back_to_the_page(ann_client, project, annotator, items):
    item = claim(ann_client, project)
    r = ann_client.post(url("review-draft", project, item), form_for(item, {2: "agree"}))
    assert r.status_code == 302 and r.url == url("review-item", project, item)
    assert Answer.objects.get(item=item, user=annotator).data["steps"][0]["step"] == 2


def test_an_invalid_draft_answers_json_with_the_problem(ann_client, project, annotator):
    item = make_items(project, count=1, n_steps=2, with_feedback=False, with_prediction=False)[0]
    claim(ann_client, project)
    r = ann_client.post(url("review-draft", project, item), form_for(item, {0: "agree"}), HTTP_ACCEPT="application/json")
    assert r.status_code == 400
    assert r.json()["ok"] is False and "nothing to agree with" in r.json()["error"]
    assert not Answer.objects.exists()


def test_a_draft_for_an_item_not_held_is_refused(ann_client, project, items):
    r = ann_client.post(url("review-draft", project, items[1]), form_for(items[1], {0: "agree"}),
                        HTTP_ACCEPT="application/json")
    assert r.status_code == 409 and r.json()["ok"] is False
    assert not Answer.objects.exists()


# --- submit -----------------------------------------------------------------------------


def test_submit_stores_the_answer_and_goes_to_the_next_item(ann_client, project, annotator, items):
    item = claim(ann_client, project)
    data = form_for(item, {0: "agree", 1: "disagree", 2: "unsure"}, {1: "it opened the fridge"}, notes="fine")
    r = ann_client.post(url("review-submit", project, item), data)
    assert r.status_code == 302
    nxt = moved_on_to(r.url, project, annotator)  # the next item, claimed with the submit
    assert nxt != item and nxt in items
    answer = Answer.objects.get(item=item, user=annotator)
    assert answer.status == Answer.Status.SUBMITTED
    assert answer.time_spent_ms == 1500
    assert answer.data == {
        "steps": [
            {"step": 0, "verdict": "agree", "label": True, "reason": ""},
            {"step": 1, "verdict": "disagree", "label": True, "reason": "it opened the fridge"},
            {"step": 2, "verdict": "unsure", "label": None, "reason": ""},
        ],
        "notes": "fine",
    }
    assert not Lease.objects.filter(item=item, user=annotator).exists()
    item.refresh_from_db()
    assert item.answer_count == 1
    assert claim(ann_client, project) == nxt  # review-next resumes it


def test_submit_from_htmx_answers_with_hx_redirect(ann_client, project, annotator, items):
    item = claim(ann_client, project)
    r = ann_client.post(url("review-submit", project, item), form_for(item, {i: "agree" for i in range(3)}),
                        HTTP_HX_REQUEST="true")
    assert r.status_code == 200
    assert moved_on_to(r["HX-Redirect"], project, annotator) == items[1]


def test_the_last_submit_goes_to_the_empty_queue(ann_client, project, annotator, items):
    for _ in items:
        item = claim(ann_client, project)
        r = ann_client.post(url("review-submit", project, item), form_for(item, {i: "agree" for i in range(3)}))
    assert r.status_code == 302 and moved_on_to(r.url, project, annotator) is None
    assert b"Nothing left to review" in ann_client.get(r.url).content


def test_explicit_labels_without_a_verdict_count(ann_client, project, annotator, items):
    item = claim(ann_client, project)
    data = form_for(item, {0: "agree", 1: "agree"})
    data["step-2-label"] = "no"
    r = ann_client.post(url("review-submit", project, item), data)
    assert r.status_code == 302
    steps = Answer.objects.get(item=item, user=annotator).data["steps"]
    assert steps[2] == {"step": 2, "verdict": None, "label": False, "reason": ""}


def test_disagree_always_means_the_opposite_of_the_shown_label(ann_client, project, annotator, items):
    """A plain form can send disagree together with the label it disagrees with; the shown label decides."""
    item = claim(ann_client, project)
    data = form_for(item, {0: "disagree", 1: "agree", 2: "agree"})
    data["step-0-label"] = "yes"  # step 0 shows "productive"
    assert ann_client.post(url("review-submit", project, item), data).status_code == 302
    assert Answer.objects.get(item=item, user=annotator).data["steps"][0]["label"] is False


def test_submitting_twice_stores_one_answer(ann_client, project, annotator, items):
    item = claim(ann_client, project)
    data = form_for(item, {i: "agree" for i in range(3)})
    first = ann_client.post(url("review-submit", project, item), data)
    second = ann_client.post(url("review-submit", project, item), data, HTTP_HX_REQUEST="true")
    assert first.status_code == 302
    # both go to the same next item: the second submit stores nothing and resumes the claim
    assert second.status_code == 200 and second["HX-Redirect"] == first.url
    assert moved_on_to(first.url, project, annotator) != item
    assert Answer.objects.filter(item=item).count() == 1
    item.refresh_from_db()
    assert item.answer_count == 1
    assert not Lease.objects.filter(user=annotator, item=item).exists()


def test_an_invalid_submit_shows_the_errors_and_keeps_the_input(ann_client, project, annotator, items):
    item = claim(ann_client, project)
    data = form_for(item, {1: "disagree"}, {0: "keep this reason", 1: "and this one"}, notes="my notes")
    r = ann_client.post(url("review-submit", project, item), data)
    assert r.status_code == 400
    html = r.content.decode()
    assert 'id="review-errors"' in html and "Not submitted" in html
    assert "2 step(s) have no verdict: 0, 2" in html
    assert ">keep this reason</textarea>" in html and ">and this one</textarea>" in html
    assert ">my notes</textarea>" in html
    assert 'name="step-1-verdict" value="disagree" checked' in html
    assert 'name="step-1-label" value="yes" checked' in html  # step 1 shows "no"
    assert 'data-first-error="0"' in html
    assert 'class="step missing" id="step-0"' in html and 'class="step missing" id="step-2"' in html
    assert 'class="step" id="step-1"' in html
    assert not Answer.objects.filter(status=Answer.Status.SUBMITTED).exists()
    assert Lease.objects.filter(item=item, user=annotator).exists()


def test_an_invalid_submit_from_htmx_gets_the_form_only(ann_client, project, items):
    item = claim(ann_client, project)
    r = ann_client.post(url("review-submit", project, item), form_for(item, {0: "agree"}, notes="x"),
                        HTTP_HX_REQUEST="true")
    assert r.status_code == 400
    html = r.content.decode()
    assert "<html" not in html and html.lstrip().startswith('<div id="review"')
    assert "have no verdict: 1, 2" in html and ">x</textarea>" in html


def test_a_step_error_points_at_its_step(ann_client, project):
    item = make_items(project, count=1, n_steps=3, with_feedback=False, with_prediction=False)[0]
    claim(ann_client, project)
    data = form_for(item, {2: "disagree"})
    data["step-0-label"] = data["step-1-label"] = "yes"
    r = ann_client.post(url("review-submit", project, item), data)
    assert r.status_code == 400
    html = r.content.decode()
    assert '<a href="#step-2">Step 2</a>: disagree needs the corrected label' in html
    assert 'class="step has-error" id="step-2"' in html
    assert 'data-first-error="2"' in html


def test_submit_when_the_item_is_full_keeps_the_draft(ann_client, project, annotator, items):
    item = claim(ann_client, project)
    answers.save_draft(item, annotator, {"steps": [{"step": 0, "verdict": "agree"}]})
    other = add_member(project, Role.ANNOTATOR)
    # While the annotator's lease runs, nobody else may take the item's only place...
    with pytest.raises(answers.AnswerError, match="hold every open place"):
        answers.submit(item, other, full_answer(item))
    # ...once it has expired, the place is free again and someone else fills it.
    Lease.objects.filter(item=item, user=annotator).update(expires_at=timezone.now() - timedelta(seconds=1))
    answers.submit(item, other, full_answer(item))
    r = ann_client.post(url("review-submit", project, item), form_for(item, {i: "agree" for i in range(3)}))
    assert r.status_code == 409
    assert b"already has all the answers it needs" in r.content
    assert Answer.objects.get(item=item, user=annotator).status == Answer.Status.DRAFT


def test_a_submitted_item_can_be_reopened_and_changed(ann_client, project, annotator, items):
    item = claim(ann_client, project)
    ann_client.post(url("review-submit", project, item), form_for(item, {i: "agree" for i in range(3)}))
    r = ann_client.get(url("review-item", project, item))
    assert r.status_code == 200
    assert b"You submitted this item" in r.content and b'data-autosave="0"' in r.content
    r = ann_client.post(url("review-submit", project, item), form_for(item, {0: "agree", 1: "agree", 2: "unsure"}))
    assert r.status_code == 302
    answer = Answer.objects.get(item=item, user=annotator)
    assert answer.data["steps"][2]["verdict"] == "unsure"
    item.refresh_from_db()
    assert item.answer_count == 1


# --- skip -------------------------------------------------------------------------------


def test_skip_releases_the_item_and_moves_on(ann_client, project, annotator, items):
    item = claim(ann_client, project)
    r = ann_client.post(url("review-skip", project, item))
    assert r.status_code == 302
    nxt = moved_on_to(r.url, project, annotator)
    assert not Lease.objects.filter(item=item).exists()
    assert nxt != item and claim(ann_client, project) == nxt
    assert Lease.objects.filter(user=annotator).count() == 1
    # the skipped item is free for someone else
    other = add_member(project, Role.ANNOTATOR)
    assert queue.next_item(project, other) == item


def test_skipped_items_come_back_when_nothing_else_is_left(ann_client, project, annotator):
    items = make_items(project, count=2)
    for _ in range(2):
        item = claim(ann_client, project)
        ann_client.post(url("review-skip", project, item))
    again = claim(ann_client, project)
    assert again in items
    assert Lease.objects.filter(user=annotator).count() == 1


def test_skip_keeps_the_draft(ann_client, project, annotator, items):
    item = claim(ann_client, project)
    ann_client.post(url("review-draft", project, item), form_for(item, {0: "agree"}), HTTP_ACCEPT="application/json")
    ann_client.post(url("review-skip", project, item))
    assert Answer.objects.get(item=item, user=annotator).status == Answer.Status.DRAFT


# --- form conversion --------------------------------------------------------------------


def test_feedback_from_form_leaves_out_untouched_steps_and_reads_labels():
    post = {
        "step-0-verdict": "agree", "step-0-label": "", "step-0-reason": "  ok  ",
        "step-1-verdict": "", "step-1-label": "", "step-1-reason": "",
        "step-2-verdict": "", "step-2-label": "yes", "step-2-reason": "",
        "step-3-verdict": "disagree", "step-3-label": "no", "step-3-reason": "",
        "step-4-verdict": "maybe", "step-4-label": "", "step-4-reason": "",
        "step-9-verdict": "agree",
        "notes": " n ",
    }
    out = feedback_from_form(post, 5, [True, True, None, True, None])
    assert out == {
        "steps": [
            {"step": 0, "verdict": "agree", "label": None, "reason": "ok"},
            {"step": 2, "verdict": None, "label": True, "reason": ""},
            {"step": 3, "verdict": "disagree", "label": None, "reason": ""},
            {"step": 4, "verdict": "maybe", "label": None, "reason": ""},
        ],
        "notes": "n",
    }


def test_an_unknown_verdict_is_reported_not_stored(ann_client, project, annotator, items):
    item = claim(ann_client, project)
    data = form_for(item, {0: "maybe", 1: "agree", 2: "agree"})
    r = ann_client.post(url("review-submit", project, item), data)
    assert r.status_code == 400
    assert b"Step 0" in r.content
    assert not Answer.objects.filter(status=Answer.Status.SUBMITTED).exists()
