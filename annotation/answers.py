"""Answers: drafts, submits, edits, reviewer decisions, and the final label of an item.

Every function here is the one place its rule lives; pages and the API call them.
Invariants: at most one Answer per (item, user); never more than N submitted
answers on an item (the item row is locked while counting); a final label is
recomputed whenever the answers of an item change, unless a reviewer adjudicated it.
"""

from dataclasses import dataclass

from django.db import connection, transaction
from django.utils import timezone

from . import live, queue, rawsql, training
from .agreement import resolve_unit
from .kinds.base import ImportLineError
from .models import Answer, AuditEvent, Final, Item, ItemPayload, Lease, Prediction, queue_moved

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


# Reads of the review loop, written out in SQL (annotation/rawsql.py): they run on every claim and
# submit, and compiling them through the ORM cost several times what running them did.


def latest_prediction(item: Item) -> Prediction | None:
    """The item's newest prediction (read once per item object; live_item and attach_payload read it
    along with the payload)."""
    if not hasattr(item, "_latest_prediction"):
        sql = rawsql.select(Prediction, "item_id = %s", " ORDER BY created_at DESC, id DESC LIMIT 1")
        item._latest_prediction = rawsql.first(Prediction, sql, [item.pk])
    return item._latest_prediction


_PAYLOAD = ItemPayload._meta.get_field("data")


def read_with_payload(where: str, params, *, answer_of=None, lock: bool = False,
                      before: tuple[str, list] = ("", [])) -> Item | None:
    """An item (alias i) with its payload and newest prediction, in one statement.

    `answer_of`: a user whose answer to the item (draft or not) comes in the same row, read by
    own_answers(). `lock`: the item's row is locked (FOR UPDATE OF i; a plain read on SQLite, whose
    write transactions already hold the database's lock). `before`: SQL and its parameters put in
    front of the SELECT (a WITH clause that `where` may use)."""
    answer_t = rawsql.table(Answer)
    sql = (f"{before[0] + ' ' if before[0] else ''}"
           f"SELECT {rawsql.columns(Item, 'i')}, p.{rawsql.qn(_PAYLOAD.column)}, {rawsql.columns(Prediction, 'pr')}"
           f"{', ' + rawsql.columns(Answer, 'a') if answer_of else ''}"
           f" FROM {rawsql.table(Item)} i JOIN {rawsql.table(ItemPayload)} p ON p.item_id = i.id"
           f" LEFT JOIN {rawsql.table(Prediction)} pr ON pr.id = (SELECT id FROM {rawsql.table(Prediction)}"
           " WHERE item_id = i.id ORDER BY created_at DESC, id DESC LIMIT 1)"
           f"{f' LEFT JOIN {answer_t} a ON a.item_id = i.id AND a.user_id = %s' if answer_of else ''}"
           f" WHERE {where}")
    if lock and connection.features.has_select_for_update_of:
        sql += " FOR UPDATE OF i"
    extra = {"payload_data": _PAYLOAD, **rawsql.joined(Prediction, "prediction_")}
    if answer_of:
        extra.update(rawsql.joined(Answer, "answer_"))
        params = [answer_of.pk, *params]
    item = rawsql.first(Item, sql, [*before[1], *params], extra=extra)
    if item is not None:
        item.payload = ItemPayload(item=item, data=item.__dict__.pop("payload_data"))
        item.payload._state.adding, item.payload._state.db = False, item._state.db
        item._latest_prediction = rawsql.take_joined(item, Prediction, "prediction_")
        if answer_of:
            answer = rawsql.take_joined(item, Answer, "answer_")
            if answer is not None:
                answer.user = answer_of
            item._own_answers = (answer_of.pk, [answer] if answer is not None else [])
    return item


def attach_payload(item: Item, *, answer_of=None) -> Item:
    """Read the payload and the newest prediction of an item that was read without them, and `answer_of`'s
    answer to it (see read_with_payload), in one statement."""
    found = read_with_payload("i.id = %s", [item.pk], answer_of=answer_of)
    item.payload, item._latest_prediction = found.payload, found._latest_prediction
    if answer_of:
        item._own_answers = found._own_answers
    return item


def live_item(project, item_id: int, *, with_payload: bool = True) -> Item | None:
    """An item of the project that finished importing, or None; with its payload and newest prediction in
    the same query."""
    if rawsql.row_id(item_id) is None:
        return None
    where, params = "i.id = %s AND i.project_id = %s AND i.state <> %s", [item_id, project.pk, Item.State.STAGED.value]
    if with_payload:
        return read_with_payload(where, params)
    return rawsql.first(Item, f"SELECT {rawsql.columns(Item, 'i')} FROM {rawsql.table(Item)} i WHERE {where}", params)


def own_answers(item: Item, user) -> list[Answer]:
    """The user's answer to the item (draft or not), as a list of zero or one, with its user attached
    (no query when the item was read with it: attach_payload(answer_of=user))."""
    cached = getattr(item, "_own_answers", None)
    if cached is not None and cached[0] == user.pk:
        return cached[1]
    answers = rawsql.rows(Answer, rawsql.select(Answer, "item_id = %s AND user_id = %s"), [item.pk, user.pk])
    for answer in answers:
        answer.user = user
    return answers


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


def _lock(item: Item) -> Item:
    """The item's row, read again under its row lock (a plain read on SQLite, whose write transactions
    already hold the database's lock), with the caller's project attached. Its payload and newest
    prediction come along: from `item` when the caller read them, otherwise in the same statement.
    An item outside `item.project`, or still being imported, is not found (404)."""
    if Item.payload.is_cached(item):
        lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
        locked = rawsql.first(Item, rawsql.select(Item, "id = %s AND project_id = %s", lock),
                              [item.pk, item.project_id])
        if locked is not None:
            locked.payload = item.payload
            if hasattr(item, "_latest_prediction"):
                locked._latest_prediction = item._latest_prediction
    else:
        locked = None
        if rawsql.row_id(item.pk) is not None:
            locked = read_with_payload("i.id = %s AND i.project_id = %s AND i.state <> %s",
                                       [item.pk, item.project_id, Item.State.STAGED.value], lock=True)
    if locked is None:
        raise AnswerError("No such item in this project.", status=404)
    locked.project = item.project  # resolve_final reads both: no second query for either
    return locked


def _own_answer_and_leases(item: Item, user, now) -> tuple[Answer | None, bool, int, object]:
    """(the user's answer to the item or None, the user holds an active lease, active leases of others,
    when the user's lease began or None), in one statement. Read after the item's row lock is taken, so
    it sees every answer and lease committed before."""
    at = connection.ops.adapt_datetimefield_value(now)
    sql = (f"SELECT {rawsql.columns(Answer, 'a')}, l.own, l.others, l.began FROM ("
           "SELECT COALESCE(SUM(CASE WHEN user_id = %s AND expires_at > %s THEN 1 ELSE 0 END), 0) AS own,"
           " COALESCE(SUM(CASE WHEN user_id <> %s AND expires_at > %s THEN 1 ELSE 0 END), 0) AS others,"
           " MIN(CASE WHEN user_id = %s THEN created_at END) AS began"
           f" FROM {rawsql.table(Lease)} WHERE item_id = %s) l"
           f" LEFT JOIN {rawsql.table(Answer)} a ON a.item_id = %s AND a.user_id = %s")
    row = rawsql.first(Answer, sql, [user.pk, at, user.pk, at, user.pk, item.pk, item.pk, user.pk],
                       extra={"lease_own": None, "lease_others": None,
                              "lease_began": Lease._meta.get_field("created_at")})
    values = row.__dict__
    own, others, began = values.pop("lease_own"), values.pop("lease_others"), values.pop("lease_began")
    answer = None
    if row.pk is not None:  # the user has an answer (the LEFT JOIN found one)
        answer = row
        answer.user = user
    return answer, bool(own), int(others), began


def submit(item: Item, user, data: dict, time_spent_ms=0) -> SubmitResult:
    """Store the user's answer once. A second identical submit returns the stored answer; a changed
    one is an edit (audited) as long as no reviewer has adjudicated the item.

    `item` needs only its id and project: one that was read without its payload (the API's submit) is
    read with it under the lock, and AnswerError(404) is raised when it is not a live item of the project."""
    project = item.project
    with transaction.atomic():
        locked = _lock(item)
        cleaned, model_version = _clean(locked, data, final=True)
        now = timezone.now()
        answer, holds_lease, held_by_others, lease_began = _own_answer_and_leases(locked, user, now)
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
        if not holds_lease and locked.answer_count + held_by_others >= project.answers_per_item:
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
        if not answer.time_spent_ms and lease_began is not None:
            answer.time_spent_ms = _time((now - lease_began).total_seconds() * 1000)
        event = AuditEvent.of(actor=user, verb="answer.submitted", obj=answer, project=project, after=cleaned)
        locked.answer_count += 1
        # Usually the item stays open: its new count is all resolve_final would write, and it goes with the rest
        count_too = _stays_open(locked)
        _store_submitted(answer, event, drop_lease=lease_began is not None,
                         item=locked, item_fields=["answer_count"] if count_too else [])
        resolve_final(locked, changed=[] if count_too else ["answer_count"])
    live.project_changed(project.pk)
    return SubmitResult(answer, created=True)


_SUBMITTED_FIELDS = tuple(f.name for f in Answer._meta.concrete_fields if not f.primary_key)


def _store_submitted(answer: Answer, event: AuditEvent, *, drop_lease: bool, item: Item, item_fields) -> None:
    """Write a submitted answer (new, or the user's draft), delete the user's lease on the item when
    `drop_lease`, update `item_fields` of the item, and store `event`, whose object is the answer.

    On PostgreSQL in one statement: the answer's write and the others as data-modifying WITH queries,
    the event inserted with the id the answer's write returns. They touch different tables, so seeing
    one snapshot changes nothing; one round trip instead of up to four. Elsewhere one statement each."""
    lease_sql = f"DELETE FROM {rawsql.table(Lease)} WHERE item_id = %s AND user_id = %s"
    lease_params = [item.pk, answer.user_id]
    if connection.vendor != "postgresql":
        if answer._state.adding:
            rawsql.insert(answer)
        else:
            rawsql.update(answer, _SUBMITTED_FIELDS)
        event.object_id = str(answer.pk)
        with connection.cursor() as cursor:
            if drop_lease:
                cursor.execute(lease_sql, lease_params)
            if item_fields:
                cursor.execute(*rawsql.update_statement(item, item_fields))
        rawsql.insert(event)
        return
    if answer._state.adding:
        answer_sql, params = rawsql.insert_statement(answer)
    else:
        answer_sql, params = rawsql.update_statement(answer, _SUBMITTED_FIELDS)
        answer_sql += f" RETURNING {rawsql.qn(Answer._meta.pk.column)}"
    parts = [f"answer AS ({answer_sql})"]
    if drop_lease:
        parts.append(f"lease AS ({lease_sql})")
        params += lease_params
    if item_fields:
        item_sql, item_params = rawsql.update_statement(item, item_fields)
        parts.append(f"item AS ({item_sql})")
        params += item_params
    pk = rawsql.qn(Answer._meta.pk.column)
    event_sql, event_params = rawsql.insert_statement(event, computed={"object_id": f"answer.{pk}::text"},
                                                      source="answer")
    object_column = rawsql.qn(AuditEvent._meta.get_field("object_id").column)
    with connection.cursor() as cursor:  # the event's INSERT returns its id, and the answer's with it
        cursor.execute(f"WITH {', '.join(parts)} {event_sql}, {object_column}", [*params, *event_params])
        event.pk, object_id = cursor.fetchone()
    answer.pk, event.object_id = int(object_id), object_id
    rawsql.saved(answer)
    rawsql.saved(event)


def _stays_open(item: Item) -> bool:
    """An open item still short of its N answers: resolve_final keeps it open and writes nothing but the
    fields its caller changed."""
    return item.state == Item.State.OPEN and item.answer_count < item.project.answers_per_item


def resolve_final(item: Item, *, changed: list[str] | None = None, moves_queue: bool = True) -> Final | None:
    """Apply the final-label rule to a locked item and set its state. Call inside a transaction.
    `changed`: other fields of the item the caller changed, saved in the same UPDATE as the state.
    An item that opens again may lie ahead of reviewers' places in the queue: it moves the queue's
    epoch, unless `moves_queue` is False (the caller then does so once, after its last item lock)."""
    project = item.project
    fields = list(changed or [])

    def save(state=None):
        reopened = state == Item.State.OPEN and item.state != state
        if state is not None and item.state != state:
            item.state = state
            fields.append("state")
        if fields:
            rawsql.update(item, fields)
        if reopened and moves_queue:
            queue_moved([item.project_id])

    if project.retrain_every > 0:  # 0: automatic training is off, nothing to check after commit
        training.labels_changed(project.pk)  # after commit: queue a training run when enough new labels came in
    # An open item has no final label: one is written only together with the state final (here and in
    # adjudicate) and deleted whenever the state goes back to open. The common submit needs no read.
    no_final = item.state == Item.State.OPEN
    if _stays_open(item):
        save()
        return None
    if item.answer_count < project.answers_per_item:
        # One read in the common case (no final label at all); a delete only when there is one to drop.
        methods = set(Final.objects.filter(item=item).values_list("method", flat=True))
        if methods - {Final.Method.ADJUDICATED}:
            Final.objects.filter(item=item).exclude(method=Final.Method.ADJUDICATED).delete()
        save(Item.State.FINAL if Final.Method.ADJUDICATED in methods else Item.State.OPEN)
        return None
    existing = None if no_final else Final.objects.filter(item=item).first()
    if existing is not None and existing.method == Final.Method.ADJUDICATED:
        save(Item.State.FINAL)
        return existing
    kind = project.kind_spec
    payload = item.payload.data
    submitted = rawsql.select(Answer, "item_id = %s AND status = %s", " ORDER BY id")
    answers = [a.data for a in rawsql.rows(Answer, submitted, [item.pk, Answer.Status.SUBMITTED.value])]
    per_unit = [kind.unit_labels(a) for a in answers]
    resolved, methods = {}, {}
    unresolved = False
    for unit in kind.units(payload):
        label, method = resolve_unit([u.get(unit) for u in per_unit])
        if method is None:
            unresolved = True
        resolved[unit], methods[unit] = label, method
    if unresolved:
        if not no_final:
            Final.objects.filter(item=item).delete()
        save(Item.State.DONE)
        return None
    method = Final.Method.MAJORITY if "majority" in methods.values() else Final.Method.UNANIMOUS
    final = Final(item=item, data=kind.build_final(payload, answers, resolved, methods), method=method,
                  decided_by=None, decided_at=timezone.now())
    # One upsert: replaces an earlier majority or unanimous label (an adjudicated one returned above)
    Final.objects.bulk_create([final], update_conflicts=True, unique_fields=["item"],
                              update_fields=["data", "method", "decided_by", "decided_at"])
    save(Item.State.FINAL)
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
            # the queue's epoch once, at the end: the caller may hold every item's row until it commits
            resolve_final(Item.objects.select_for_update().select_related("project").get(pk=pk), moves_queue=False)
        count += 1
    if count:
        queue_moved([project.pk])  # items opened or settled: reviewers' places are found again
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
