"""Answers: drafts, submits, edits, reviewer decisions, and the final label of an item.

Every function here is the one place its rule lives; pages and the API call them.
Invariants: at most one Answer per (item, user); never more than N submitted
answers on an item (the item row is locked while counting); a final label is
recomputed whenever the answers of an item change, unless a reviewer adjudicated it.
"""

from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from . import live, queue, training
from .agreement import resolve_unit
from .kinds.base import ImportLineError
from .models import Answer, AuditEvent, Final, Item, Prediction

MAX_TIME_SPENT_MS = 24 * 3600 * 1000


class AnswerError(Exception):
    """A problem a person can fix; `status` is the HTTP status pages and the API answer with."""

    def __init__(self, message: str, *, status: int = 400, errors: list[dict] | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.errors = errors or []


@dataclass
class SubmitResult:
    answer: Answer
    created: bool  # False when the same answer was already stored (a double submit)


def latest_prediction(item: Item) -> Prediction | None:
    return item.predictions.order_by("-created_at", "-pk").first()


def _clean(item: Item, data: dict, *, final: bool) -> tuple[dict, str]:
    kind = item.project.kind_spec
    prediction = latest_prediction(item)
    if not isinstance(data, dict):
        raise AnswerError("The answer must be a JSON object.")
    try:
        cleaned = kind.clean_feedback(item.payload.data, prediction.data if prediction else None, data, final=final)
    except ImportLineError as exc:
        errors = [{"field": e.field, "message": e.message} for e in exc.errors]
        raise AnswerError("; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors) from None
    return cleaned, prediction.model_version if prediction else ""


def _time(ms) -> int:
    try:
        return max(0, min(int(ms or 0), MAX_TIME_SPENT_MS))
    except (TypeError, ValueError):
        return 0


def save_draft(item: Item, user, data: dict, time_spent_ms=0) -> Answer:
    cleaned, model_version = _clean(item, data, final=False)
    with transaction.atomic():
        answer, _ = Answer.objects.select_for_update().get_or_create(
            item=item, user=user, defaults={"guidelines_version": item.project.guidelines_version}
        )
        if answer.status == Answer.Status.SUBMITTED:
            raise AnswerError("This answer is already submitted; submit again to change it.", status=409)
        answer.data = cleaned
        answer.status = Answer.Status.DRAFT
        answer.model_version = model_version
        answer.time_spent_ms = max(answer.time_spent_ms, _time(time_spent_ms))
        answer.save()
    queue.renew(item, user)
    return answer


def submit(item: Item, user, data: dict, time_spent_ms=0) -> SubmitResult:
    """Store the user's answer once. A second identical submit returns the stored answer; a changed
    one is an edit (audited) as long as no reviewer has adjudicated the item."""
    cleaned, model_version = _clean(item, data, final=True)
    project = item.project
    with transaction.atomic():
        locked = Item.objects.select_for_update().get(pk=item.pk)
        locked.project = project  # resolve_final reads it: no second query for the project
        answer = Answer.objects.filter(item=locked, user=user).first()
        if answer is not None and answer.status == Answer.Status.SUBMITTED:
            if answer.data == cleaned:
                return SubmitResult(answer, created=False)
            if Final.objects.filter(item=locked, method=Final.Method.ADJUDICATED).exists():
                raise AnswerError("A reviewer has already decided this item; your answer can no longer change.",
                                  status=409)
            before = answer.data
            answer.data = cleaned
            answer.time_spent_ms += _time(time_spent_ms)
            answer.save(update_fields=["data", "time_spent_ms", "updated_at"])
            AuditEvent.record(actor=user, verb="answer.edited", obj=answer, project=project,
                              before=before, after=cleaned)
            resolve_final(locked)
            live.project_changed(project.pk)
            return SubmitResult(answer, created=False)
        if locked.state == Item.State.STAGED:
            raise AnswerError("This item is still being imported.", status=409)
        if locked.answer_count >= project.answers_per_item:
            raise AnswerError("This item already has all the answers it needs; your draft is kept.", status=409)
        now = timezone.now()
        active = locked.leases.filter(expires_at__gt=now)
        if not active.filter(user=user).exists():
            held_by_others = active.exclude(user=user).count()
            if locked.answer_count + held_by_others >= project.answers_per_item:
                raise AnswerError("Other reviewers hold every open place on this item; your draft is kept.",
                                  status=409)
        if answer is None:
            answer = Answer(item=locked, user=user)
        answer.data = cleaned
        answer.status = Answer.Status.SUBMITTED
        answer.submitted_at = now
        answer.model_version = model_version
        answer.guidelines_version = project.guidelines_version
        answer.time_spent_ms = max(answer.time_spent_ms, _time(time_spent_ms))
        if not answer.time_spent_ms:
            lease = locked.leases.filter(user=user).first()
            if lease is not None:
                answer.time_spent_ms = _time((now - lease.created_at).total_seconds() * 1000)
        answer.save()
        locked.answer_count += 1
        locked.save(update_fields=["answer_count"])
        locked.leases.filter(user=user).delete()
        AuditEvent.record(actor=user, verb="answer.submitted", obj=answer, project=project, after=cleaned)
        resolve_final(locked)
    live.project_changed(project.pk)
    return SubmitResult(answer, created=True)


def resolve_final(item: Item) -> Final | None:
    """Apply the final-label rule to a locked item and set its state. Call inside a transaction."""
    project = item.project
    if project.retrain_every > 0:  # 0: automatic training is off, nothing to check after commit
        training.labels_changed(project.pk)  # after commit: queue a training run when enough new labels came in
    if item.answer_count < project.answers_per_item:
        # One read in the common case (no final label at all); a delete only when there is one to drop.
        methods = set(Final.objects.filter(item=item).values_list("method", flat=True))
        if methods - {Final.Method.ADJUDICATED}:
            Final.objects.filter(item=item).exclude(method=Final.Method.ADJUDICATED).delete()
        new_state = Item.State.FINAL if Final.Method.ADJUDICATED in methods else Item.State.OPEN
        if item.state != new_state:
            item.state = new_state
            item.save(update_fields=["state"])
        return None
    existing = Final.objects.filter(item=item).first()
    if existing is not None and existing.method == Final.Method.ADJUDICATED:
        if item.state != Item.State.FINAL:
            item.state = Item.State.FINAL
            item.save(update_fields=["state"])
        return existing
    kind = project.kind_spec
    payload = item.payload.data
    answers = list(item.answers.filter(status=Answer.Status.SUBMITTED).values_list("data", flat=True))
    per_unit = [kind.unit_labels(a) for a in answers]
    resolved, methods = {}, {}
    unresolved = False
    for unit in kind.units(payload):
        label, method = resolve_unit([u.get(unit) for u in per_unit])
        if method is None:
            unresolved = True
        resolved[unit], methods[unit] = label, method
    if unresolved:
        Final.objects.filter(item=item).delete()
        if item.state != Item.State.DONE:
            item.state = Item.State.DONE
            item.save(update_fields=["state"])
        return None
    method = Final.Method.MAJORITY if "majority" in methods.values() else Final.Method.UNANIMOUS
    data = kind.build_final(payload, answers, resolved, methods)
    final, _ = Final.objects.update_or_create(
        item=item, defaults={"data": data, "method": method, "decided_by": None, "decided_at": timezone.now()}
    )
    if item.state != Item.State.FINAL:
        item.state = Item.State.FINAL
        item.save(update_fields=["state"])
    return final


def reresolve_project(project) -> int:
    """After the number of answers per item changed: reopen items that are now short of answers and
    settle items that now have enough. Returns how many items were looked at."""
    from django.db.models import Q

    n = project.answers_per_item
    affected = Item.objects.live().filter(project=project).filter(
        Q(state=Item.State.OPEN, answer_count__gte=n)
        | Q(state__in=[Item.State.DONE, Item.State.FINAL], answer_count__lt=n)
    )
    count = 0
    for pk in affected.values_list("pk", flat=True).iterator(chunk_size=2000):
        with transaction.atomic():
            resolve_final(Item.objects.select_for_update().select_related("project").get(pk=pk))
        count += 1
    if count:
        live.project_changed(project.pk)
    return count


def adjudicate(item: Item, reviewer, data: dict) -> Final:
    """A reviewer decides the final label of every unit; it wins over any later rule."""
    cleaned, _ = _clean(item, data, final=True)
    kind = item.project.kind_spec
    labels = kind.unit_labels(cleaned)
    units = kind.units(item.payload.data)
    missing = [u for u in units if labels.get(u) is None]
    if missing:
        raise AnswerError(f"Decide every step: {len(missing)} without a label ({', '.join(missing[:20])}).")
    with transaction.atomic():
        locked = Item.objects.select_for_update().get(pk=item.pk)
        before = Final.objects.filter(item=locked).values("data", "method").first()
        answers = list(locked.answers.filter(status=Answer.Status.SUBMITTED).values_list("data", flat=True))
        final_data = kind.build_final(locked.payload.data, answers + [cleaned], labels,
                                      {u: "adjudicated" for u in units})
        final, _ = Final.objects.update_or_create(
            item=locked,
            defaults={"data": final_data, "method": Final.Method.ADJUDICATED, "decided_by": reviewer,
                      "decided_at": timezone.now()},
        )
        locked.state = Item.State.FINAL
        locked.save(update_fields=["state"])
        training.labels_changed(locked.project_id)
        AuditEvent.record(actor=reviewer, verb="item.adjudicated", obj=final, project=locked.project,
                          before=before, after={"data": final_data, "method": "adjudicated"})
    live.project_changed(item.project_id)
    return final


def review_answer(answer: Answer, reviewer, *, accept: bool, comment: str = "") -> Answer:
    """A reviewer accepts a submitted answer (kept, marked reviewed) or rejects it (the item reopens)."""
    with transaction.atomic():
        item = Item.objects.select_for_update().get(pk=answer.item_id)
        answer = Answer.objects.select_for_update().get(pk=answer.pk)
        if answer.status != Answer.Status.SUBMITTED:
            raise AnswerError("Only submitted answers can be accepted or rejected.", status=409)
        before = {"status": answer.status}
        answer.reviewed_by = reviewer
        if not accept:
            answer.status = Answer.Status.REJECTED
            item.answer_count = max(0, item.answer_count - 1)
            item.save(update_fields=["answer_count"])
        answer.save(update_fields=["status", "reviewed_by", "updated_at"])
        AuditEvent.record(actor=reviewer, verb="answer.accepted" if accept else "answer.rejected", obj=answer,
                          project=item.project, before=before, after={"status": answer.status, "comment": comment})
        resolve_final(item)
    live.project_changed(item.project_id)
    return answer
