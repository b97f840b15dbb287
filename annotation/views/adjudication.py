"""Pages: the disagreement queue, adjudication, and accepting or rejecting answers.

Everything here shows several annotators' answers side by side, so every view
needs REVIEW: annotators never see each other's answers.

The disagreement queue holds items whose answers are all in but whose
annotators disagree: first items with a tie on some step (state DONE, no final
label), then items settled by a majority (state FINAL, method majority), which a
reviewer may confirm or overrule. Inside each group items go by import order.
"""

from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Case, IntegerField, Q, Value, When
from django.http import HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect
from django.urls import path, reverse
from django.views.decorators.http import require_POST

from ..agreement import AlphaAccumulator, percent_agreement, resolve_unit
from ..answers import AnswerError, adjudicate, latest_prediction, review_answer
from ..kinds.lfm import shown_labels
from ..models import Answer, Final, Item
from ..permissions import REVIEW, project_view
from ..stats import item_unit_labels, units_of
from .projects import page

PAGE_SIZE = 50
TIED, MAJORITY = 0, 1  # order of the two groups in the queue


def disagreements(project):
    """The project's disagreement queue, in order, as a queryset with `group` annotated."""
    return (
        Item.objects.live()
        .filter(project=project)
        .filter(Q(state=Item.State.DONE) | Q(state=Item.State.FINAL, final__method=Final.Method.MAJORITY))
        .annotate(group=Case(When(state=Item.State.DONE, then=Value(TIED)), default=Value(MAJORITY),
                             output_field=IntegerField()))
        .order_by("group", "seq")
    )


def next_disagreement(project, item, group: int):
    """The disagreement after `item` (which was in `group`) in queue order, wrapping around; None if none."""
    queue = disagreements(project).exclude(pk=item.pk)
    after = queue.filter(Q(group__gt=group) | Q(group=group, seq__gt=item.seq)).first()
    return after or queue.first()


def _queue_group(item: Item) -> int:
    return TIED if item.state == Item.State.DONE else MAJORITY


def _unit_summary(answer_labels: list[dict]) -> dict:
    """How many units disagree, how many are tied, and the agreement on one item."""
    units = units_of(answer_labels)
    acc = AlphaAccumulator()
    disagreeing = tied = 0
    for unit in units:
        acc.add_unit(unit)
        if len({v for v in unit if v is not None}) > 1:
            disagreeing += 1
        if resolve_unit(unit)[1] is None:
            tied += 1
    return {"disagreeing": disagreeing, "tied": tied, "alpha": acc.alpha(), "percent": percent_agreement(units)}


@project_view(REVIEW)
def disagreement_list(request, project):
    queue = disagreements(project).only("pk", "external_id", "seq", "state", "answer_count", "step_count")
    page_obj = Paginator(queue, PAGE_SIZE).get_page(request.GET.get("page"))
    items = list(page_obj)
    labels = dict(item_unit_labels(project, [i.pk for i in items]))
    rows = [{"item": i, "tied_group": i.group == TIED, **_unit_summary(labels.get(i.pk, []))} for i in items]
    counts = {
        "tied": Item.objects.live().filter(project=project, state=Item.State.DONE).count(),
        "majority": Item.objects.live().filter(project=project, state=Item.State.FINAL,
                                               final__method=Final.Method.MAJORITY).count(),
    }
    return page(request, "annotation/disagreement_list.html", project, page_obj=page_obj, rows=rows, counts=counts)


def _label_name(value) -> str:
    return "" if value is None else ("yes" if value else "no")


def _steps_context(item: Item, answers: list[Answer], final: Final | None, chosen: dict, reasons: dict,
                   missing: set) -> list[dict]:
    """One row per step: the step, what the LLM and the model said, each answer, and the decision."""
    payload = item.payload.data
    prediction = latest_prediction(item)
    pred_data = prediction.data if prediction else None
    shown = shown_labels(payload, pred_data)
    preds = {p["step"]: p for p in (pred_data or {}).get("steps", [])}
    by_answer = [{s["step"]: s for s in a.data.get("steps", [])} for a in answers]
    adjudicated = {}
    if final is not None and final.method == Final.Method.ADJUDICATED:
        adjudicated = {s["step"]: s.get("label") for s in final.data.get("steps", [])}
    rows = []
    for i, step in enumerate(payload["steps"]):
        cells = []
        for answer, steps in zip(answers, by_answer):
            s = steps.get(i, {})
            cells.append({"user": answer.user.username, "label": _label_name(s.get("label")),
                          "verdict": s.get("verdict") or "", "reason": s.get("reason") or ""})
        resolved, method = resolve_unit([steps.get(i, {}).get("label") for steps in by_answer])
        if i in chosen:
            decision = chosen[i]
        elif i in adjudicated:
            decision = _label_name(adjudicated[i])
        else:
            decision = _label_name(resolved)
        p = preds.get(i)
        fb = step.get("feedback") or {}
        rows.append({
            "index": i,
            "step": step,
            "llm_label": _label_name(fb["productive"]) if "productive" in fb else "",
            "llm_reason": fb.get("reason", ""),
            "llm_source": fb.get("source", ""),
            "model_probability": p["probability"] if p else None,
            "model_label": _label_name(p["probability"] >= 0.5) if p else "",
            "model_explanation": p.get("explanation", "") if p else "",
            "shown": _label_name(shown[i]),
            "answers": cells,
            "resolved": _label_name(resolved),
            "method": method or "tie",
            "decision": decision,
            "reason": reasons.get(i, ""),
            "missing": i in missing,
        })
    return rows


def _render_adjudicate(request, project, item, *, chosen=None, reasons=None, notes="", error=None, missing=(),
                       status=200):
    answers = list(item.answers.filter(status=Answer.Status.SUBMITTED).select_related("user").order_by(
        "submitted_at", "pk"))
    final = Final.objects.filter(item=item).select_related("decided_by").first()
    steps = _steps_context(item, answers, final, chosen or {}, reasons or {}, set(missing))
    following = next_disagreement(project, item, _queue_group(item))
    response = page(
        request,
        "annotation/adjudicate.html",
        project,
        item=item,
        payload=item.payload.data,
        answers=answers,
        final=final,
        steps=steps,
        notes=notes,
        error=error,
        undecided=sum(1 for s in steps if not s["decision"]),
        next_item=following,
    )
    response.status_code = status
    return response


def _read_form(post, n_steps: int):
    chosen, reasons, missing = {}, {}, []
    for i in range(n_steps):
        value = post.get(f"label-{i}", "")
        chosen[i] = value if value in ("yes", "no") else ""
        reasons[i] = post.get(f"reason-{i}", "")
        if not chosen[i]:
            missing.append(i)
    return chosen, reasons, missing


@project_view(REVIEW)
def adjudicate_item(request, project, item_id):
    item = get_object_or_404(Item.objects.live().select_related("payload", "project"), pk=item_id, project=project)
    if item.state == Item.State.OPEN:
        messages.error(request, f"This item is still collecting answers ({item.answer_count} of "
                                f"{project.answers_per_item}); it can be decided once they are all in.")
        return redirect("item-detail", project.pk, item.pk)
    if request.method != "POST":
        return _render_adjudicate(request, project, item)

    group = _queue_group(item)
    n_steps = len(item.payload.data["steps"])
    chosen, reasons, missing = _read_form(request.POST, n_steps)
    notes = request.POST.get("notes", "")
    steps = []
    for i in range(n_steps):
        step = {"step": i, "reason": reasons[i]}
        if chosen[i]:
            step["label"] = chosen[i] == "yes"
        steps.append(step)
    data = {"steps": steps, "notes": notes}
    try:
        adjudicate(item, request.user, data)
    except AnswerError as exc:
        return _render_adjudicate(request, project, item, chosen=chosen, reasons=reasons, notes=notes,
                                  error=exc, missing=missing, status=exc.status)
    messages.success(request, f"Item {item.external_id or item.pk} decided.")
    following = next_disagreement(project, item, group)
    if following is None:
        messages.info(request, "No disagreements left.")
        return redirect("disagreement-list", project.pk)
    return redirect("adjudicate", project.pk, following.pk)


DECISIONS = {"accept": True, "reject": False}


@require_POST
@project_view(REVIEW)
def answer_review(request, project, answer_id):
    answer = get_object_or_404(Answer.objects.select_related("item", "user"), pk=answer_id, item__project=project)
    decision = request.POST.get("decision", "")
    if decision not in DECISIONS:
        return HttpResponseBadRequest("decision must be accept or reject")
    try:
        review_answer(answer, request.user, accept=DECISIONS[decision], comment=request.POST.get("comment", ""))
    except AnswerError as exc:
        messages.error(request, exc.message)
    else:
        who = answer.user.username
        if DECISIONS[decision]:
            messages.success(request, f"Accepted the answer of {who}.")
        elif Item.objects.filter(pk=answer.item_id, state=Item.State.OPEN).exists():
            messages.success(request, f"Rejected the answer of {who}; the item is back in the queue "
                                      "for another answer.")
        else:
            messages.success(request, f"Rejected the answer of {who}.")
    return redirect(reverse("item-detail", args=[project.pk, answer.item_id]))


urlpatterns = [
    path("projects/<int:project_id>/disagreements/", disagreement_list, name="disagreement-list"),
    path("projects/<int:project_id>/disagreements/<int:item_id>/", adjudicate_item, name="adjudicate"),
    path("projects/<int:project_id>/answers/<int:answer_id>/review/", answer_review, name="answer-review"),
]
