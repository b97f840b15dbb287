"""The review queue: which item a reviewer gets next, and leases on items.

Rules (project setting N = answers_per_item):
- a reviewer first gets back the item they already hold (an active lease they have not answered);
- otherwise the highest-priority open item that this reviewer has not answered, whose
  submitted answers plus other reviewers' active leases are fewer than N;
- ties go by import order (seq); items the reviewer skipped come back to them only when
  nothing else is left.

Where a claim starts: the candidate walk goes down the open items in queue order and passes every one
the reviewer already answered. With N > 1 those wait, ahead of the reviewer, for the others' answers,
so a reviewer ahead of the rest would pass thousands. Each claim therefore also finds the reviewer's
place (the first open item they have not answered) and this process remembers it; the next claim
starts there. A place holds until an item opens or changes priority in the project (QueueEpoch, moved
by every such write: annotation.models.queue_moved), and for PLACE_TTL_S at most, after which it is
found again from the top.

Concurrency: the candidate row is locked with SELECT ... FOR UPDATE SKIP LOCKED on
PostgreSQL and, once locked, counted again by a fresh query (claim()), so concurrent
claimers never take the same slot; submits lock the item
row and check the count again (annotation/answers.py). On SQLite every write
transaction is IMMEDIATE, which serialises claimers.
"""

import time
from datetime import timedelta

from django.db import connection, transaction
from django.db.models import Count, Exists, F, IntegerField, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from . import rawsql
from .models import Answer, Item, Lease, Project, QueueEpoch, Skip


def lease_length(project: Project) -> timedelta:
    return timedelta(minutes=project.lease_minutes)


def _answered_by(user):
    return Answer.objects.filter(item=OuterRef("pk"), user=user).exclude(status=Answer.Status.DRAFT)


def claimable(project: Project, user, now=None):
    """Open items this user may take now, best first (not locked)."""
    now = now or timezone.now()
    others = (
        Lease.objects.filter(item=OuterRef("pk"), expires_at__gt=now)
        .exclude(user=user)
        .order_by()
        .values("item")
        .annotate(c=Count("pk"))
        .values("c")
    )
    return (
        Item.objects.filter(project=project, state=Item.State.OPEN)
        .exclude(Exists(_answered_by(user)))
        .alias(held=Coalesce(Subquery(others, output_field=IntegerField()), Value(0)))
        .alias(taken=F("answer_count") + F("held"))
        .filter(taken__lt=project.answers_per_item)
        .order_by("-priority", "seq")
    )


def current_lease(project: Project, user, now=None):
    """The user's active lease on an open item of the project that they have not answered (oldest
    first), or None. Written out in SQL: next_item runs it on every call, and it usually finds
    nothing (the item is then read only when there is a lease)."""
    return rawsql.first(Lease, *_current_lease_sql(project, user, now or timezone.now()))


def _current_lease_and_epoch(project: Project, user, now) -> tuple[Lease | None, int | None]:
    """current_lease(), and the project's queue epoch as the database has it now (None while no item
    was ever opened in it), in one statement."""
    sql, params = _current_lease_sql(project, user, now)
    row = rawsql.first(Lease, f"SELECT l.*, e.value FROM {rawsql.table(Project)} p"
                              f" LEFT JOIN {rawsql.table(QueueEpoch)} e ON e.project_id = p.id"
                              f" LEFT JOIN ({sql}) l ON 1 = 1 WHERE p.id = %s", [*params, project.pk],
                       extra={"queue_epoch": None})
    if row is None:  # the project is gone
        return None, None
    return (row if row.pk is not None else None), row.queue_epoch


def _current_lease_sql(project: Project, user, now) -> tuple[str, list]:
    sql = (
        f"SELECT {rawsql.columns(Lease, 'l')} FROM {rawsql.table(Lease)} l"
        f" JOIN {rawsql.table(Item)} i ON i.id = l.item_id"
        " WHERE i.project_id = %s AND l.user_id = %s AND l.expires_at > %s AND i.state = %s"
        f" AND NOT EXISTS (SELECT 1 FROM {rawsql.table(Answer)} a"
        " WHERE a.item_id = l.item_id AND a.user_id = %s AND a.status <> %s)"
        " ORDER BY l.created_at ASC LIMIT 1"
    )
    params = [project.pk, user.pk, connection.ops.adapt_datetimefield_value(now), Item.State.OPEN.value,
              user.pk, Answer.Status.DRAFT.value]
    return sql, params


# A reviewer's place in the queue, per (project id, user id), as this process last found it:
# (the project's queue epoch then, when it was last found from the top and when at all (both
# time.monotonic()), (priority, seq) of the first open item in queue order the reviewer had not
# answered). Every write through the app that can put an item ahead of a place moves the epoch;
# PLACE_TTL_S bounds how long a change made around the app (SQL by hand) can go unseen, and a search
# from the top costs about 2 ms per thousand items of lead, once per reviewer and process in that
# time. A place only falls behind as the reviewer answers, which costs the next claim a step per
# answer; it is looked for again (finding it costs a claim about 0.1 ms of PostgreSQL's time) once
# PLACE_REFRESH_S have passed.
PLACE_TTL_S = 600.0
PLACE_REFRESH_S = 1.0
_places: dict[tuple[int, int], tuple[int, float, float, tuple[float, int]]] = {}


def _start(project: Project, user, epoch: int | None, now_s: float) -> tuple[tuple[float, int] | None, bool]:
    """(where this user's claim may start, None for the top; whether it should find the place)."""
    if epoch is None:
        return None, False
    known = _places.get((project.pk, user.pk))
    if known is None or known[0] != epoch or now_s - known[1] >= PLACE_TTL_S:
        return None, True
    return known[3], now_s - known[2] >= PLACE_REFRESH_S


PLACE_COLUMNS = {"place_priority": None, "place_seq": None}  # the candidate row's last two columns


def _remember_place(project: Project, user, epoch: int, start, now_s: float, place: tuple[float, int]):
    """Keep the place a claim found. Found from a remembered place, it keeps that one's age (the
    PLACE_TTL_S limit counts from the last search from the top)."""
    known = _places.get((project.pk, user.pk))
    anchored = known[1] if start is not None and known is not None else now_s
    _places[(project.pk, user.pk)] = (epoch, anchored, now_s, (float(place[0]), int(place[1])))


def forget_places(user_id: int) -> None:
    """Drop what this process remembers of a user's places (the user is gone; SQLite may give a new
    user the same id)."""
    for key in [k for k in _places if k[1] == user_id]:
        _places.pop(key, None)


def next_item(project: Project, user, *, with_payload: bool = False, answer_of=None) -> Item | None:
    """Claim (or resume) the next item for `user`; None when nothing is left for them.

    `with_payload`: the item comes with its payload and newest prediction, and `answer_of`'s answer to
    it (annotation.answers.attach_payload), read by the statement that takes the lease where the
    database can (PostgreSQL)."""
    now = timezone.now()
    with transaction.atomic():
        lease, epoch = _current_lease_and_epoch(project, user, now)
        if lease is None:
            return claim(project, user, now=now, with_payload=with_payload, answer_of=answer_of, epoch=epoch)
        lease.expires_at = now + lease_length(project)
        Lease.objects.filter(pk=lease.pk).update(expires_at=lease.expires_at)
        item = lease.item
        if with_payload:
            _answers().attach_payload(item, answer_of=answer_of)
        item.claimed_lease = lease  # the caller's lease as stored now (no query to read it back)
        return item


def _answers():
    """annotation.answers, which reads items with their payload; imported late, since it builds on this
    module."""
    from . import answers

    return answers


def _from(alias: str, priority: str, seq: str) -> str:
    """Items at or after the place (`priority`, `seq`: SQL values) in queue order: priority descending,
    then seq. Written so that the queue index's range starts at the place's priority."""
    return f"{alias}.priority <= {priority} AND ({alias}.priority < {priority} OR {alias}.seq >= {seq})"


def _from_start(alias: str, start: tuple[float, int]) -> tuple[str, list]:
    """_from() a place found before, with its values as parameters."""
    return _from(alias, "%s", "%s"), [start[0], start[0], start[1]]


def _not_answered(alias: str) -> str:
    return (f"NOT EXISTS (SELECT 1 FROM {rawsql.table(Answer)} a WHERE a.item_id = {alias}.id"
            " AND a.user_id = %s AND a.status <> %s)")


def _claimable_sql(project: Project, user, now, *, skipped: bool | None = None, exclude=(), pk=None,
                   lock: bool = False, select: str = "item", start=None, find_place: bool = False
                   ) -> tuple[str, list]:
    """claimable() as one SQL statement with its parameters, for the claim path.

    The same rule as claimable(), written out because building and compiling that queryset twice
    per claim was the largest single CPU cost of taking an item. `skipped`: True only items the user
    skipped, False none of them, None either. `select`: "item" (every column, best first, LIMIT 1)
    or "exists".

    `start`: (priority, seq) of a place found before; the walk starts there. Every claimable item is at
    or after the user's place (the first open item in queue order they have not answered): it is open
    and not answered by the user. With `find_place` ("item" only) the statement first finds the place
    (looking from `start`, else from the top), walks the candidates from there, and the row carries
    it as two more columns (place_priority, place_seq)."""
    item_t, lease_t, skip_t = rawsql.table(Item), rawsql.table(Lease), rawsql.table(Skip)
    at = connection.ops.adapt_datetimefield_value(now)
    where = [
        "i.project_id = %s", "i.state = %s", _not_answered("i"),
        f"i.answer_count + (SELECT COUNT(*) FROM {lease_t} l WHERE l.item_id = i.id AND l.expires_at > %s"
        " AND l.user_id <> %s) < %s",
    ]
    params = [project.pk, Item.State.OPEN.value, user.pk, Answer.Status.DRAFT.value, at, user.pk,
              project.answers_per_item]
    if skipped is not None:
        where.append(f"{'' if skipped else 'NOT '}EXISTS (SELECT 1 FROM {skip_t} s WHERE s.item_id = i.id"
                     " AND s.user_id = %s)")
        params.append(user.pk)
    exclude = list(exclude)
    if exclude:
        where.append(f"i.id NOT IN ({', '.join(['%s'] * len(exclude))})")
        params += exclude
    if pk is not None:
        where.append("i.id = %s")
        params.append(pk)
    if select == "exists":
        return f"SELECT 1 FROM {item_t} i WHERE {' AND '.join(where)} LIMIT 1", params
    head, place_columns, place_params = "", "", []
    if find_place:
        place_where = ["p.project_id = %s", "p.state = %s", _not_answered("p")]
        place_params = [project.pk, Item.State.OPEN.value, user.pk, Answer.Status.DRAFT.value]
        if start is not None:
            condition, values = _from_start("p", start)
            place_where.append(condition)
            place_params += values
        head = (f"WITH place AS (SELECT p.priority, p.seq FROM {item_t} p WHERE {' AND '.join(place_where)}"
                " ORDER BY p.priority DESC, p.seq ASC LIMIT 1) ")
        # the place's values as scalar subqueries: the place is found once (a WITH query used more than
        # once is materialized), and the index scan starts from them (NULL when the user answered every
        # open item: then nothing is claimable)
        at_priority, at_seq = "(SELECT priority FROM place)", "(SELECT seq FROM place)"
        place_columns = f", {at_priority}, {at_seq}"
        where.insert(0, _from("i", at_priority, at_seq))
    elif start is not None:
        condition, values = _from_start("i", start)
        where.append(condition)
        params += values
    sql = (f"{head}SELECT {rawsql.columns(Item, 'i')}{place_columns} FROM {item_t} i WHERE {' AND '.join(where)}"
           " ORDER BY i.priority DESC, i.seq ASC LIMIT 1")
    if lock:
        sql += " FOR UPDATE OF i SKIP LOCKED"
    return sql, [*place_params, *params]


def claim(project: Project, user, *, exclude=(), now=None, with_payload=False, answer_of=None,
          epoch: int | None = None) -> Item | None:
    """Lease the best claimable item outside `exclude` to `user` (no resume); None if there is none.
    `with_payload`, `answer_of`: as for next_item. `epoch`: the project's queue epoch as read in this
    transaction; with it the claim starts at the user's place this process remembers, if it is still
    good, and remembers the place it finds (without it, from the top, as a fresh process would)."""
    now = now or timezone.now()
    locking = connection.features.has_select_for_update_skip_locked
    passed = list(exclude)
    now_s = time.monotonic()
    start, find_place = _start(project, user, epoch, now_s)
    place_columns = PLACE_COLUMNS if find_place else None
    place = None
    # savepoint=False: inside next_item's transaction a savepoint would cost two round trips and
    # buys nothing (any error here rolls the whole claim back).
    with transaction.atomic(savepoint=False):
        while True:
            item = None
            # Items the user skipped come last: first everything else (in index order), then the skipped ones.
            for skipped in (False, True):
                sql, params = _claimable_sql(project, user, now, skipped=skipped, exclude=passed, lock=locking,
                                             start=start, find_place=find_place)
                with rawsql.planned_each_run():  # its plan depends on how many answers there are
                    item = rawsql.first(Item, sql, params, extra=place_columns)
                if item is not None:
                    place = _found_place(item)
                    break
            if item is None and locking and len(passed) == len(exclude):
                # Every claimable row is locked right now: a submit or another claim holds it until
                # it commits (milliseconds). Wait for the best of them rather than answer "nothing
                # left" while work remains; the re-check below decides once its lock is ours. Only
                # while this claim holds no row lock yet (nothing passed after locking it), so two
                # claimers never wait on each other's rows.
                for skipped in (False, True):
                    sql, params = _claimable_sql(project, user, now, skipped=skipped, exclude=passed, start=start,
                                                 find_place=find_place)
                    with rawsql.planned_each_run():
                        candidate = rawsql.first(Item, sql, params, extra=place_columns)
                    if candidate is not None:
                        item = Item.objects.select_for_update(of=("self",)).get(pk=candidate.pk)
                        place = _found_place(candidate)
                        break
            if item is None:
                return None
            lease = Lease(item=item, user=user, created_at=now, expires_at=now + lease_length(project))
            recheck = _claimable_sql(project, user, now, pk=item.pk, select="exists") if locking else None
            if with_payload and connection.vendor == "postgresql":
                # the lease's upsert and the read of the item with its payload in one statement
                leased = _lease_and_read(lease, recheck, answer_of)
                if leased is not None:
                    item = leased
                    break
            elif _lease(lease, recheck=recheck):
                if with_payload:
                    _answers().attach_payload(item, answer_of=answer_of)
                break
            passed.append(item.pk)
    if place is not None:
        _remember_place(project, user, epoch, start, now_s, place)
    item.claimed_lease = lease  # the lease as stored (no query to read it back)
    return item


def _found_place(row: Item) -> tuple[float, int] | None:
    """The place a candidate row carries (find_place), or None."""
    place = (row.__dict__.pop("place_priority", None), row.__dict__.pop("place_seq", None))
    return place if place[1] is not None else None


def _lease(lease: Lease, *, recheck: tuple[str, list] | None = None) -> bool:
    """Store `lease` in one upsert (an old expired lease of the user on the item is taken over). The
    caller holds the item's row lock, so no other claimer races it for the item.

    `recheck`: a query (SQL, parameters) that must still find the item, run in the same statement; False
    when it did not, and nothing was stored. Under READ COMMITTED the candidate query counted leases
    and answers in a snapshot taken before it locked the row, so a claimer or submitter that committed
    in between was not counted; everyone who changes an item's count holds its row lock until commit,
    so this statement, which starts once the lock is ours, sees them all."""
    with connection.cursor() as cursor:
        cursor.execute(*_lease_sql(lease, recheck))
        return cursor.rowcount > 0


def _lease_sql(lease: Lease, recheck: tuple[str, list] | None) -> tuple[str, list]:
    at = connection.ops.adapt_datetimefield_value
    params = [lease.item_id, lease.user_id, at(lease.created_at), at(lease.expires_at)]
    source = "VALUES (%s, %s, %s, %s)"
    if recheck is not None:
        source = f"SELECT %s, %s, %s, %s WHERE EXISTS ({recheck[0]})"
        params += recheck[1]
    return (f"INSERT INTO {rawsql.table(Lease)} (item_id, user_id, created_at, expires_at) {source}"
            " ON CONFLICT (item_id, user_id)"
            " DO UPDATE SET created_at = excluded.created_at, expires_at = excluded.expires_at", params)


def _lease_and_read(lease: Lease, recheck: tuple[str, list] | None, answer_of) -> Item | None:
    """_lease(), then the item read with its payload as next_item(with_payload=True) gives it, in one
    statement (PostgreSQL: the upsert as a data-modifying WITH query); None when the recheck failed
    and nothing was stored."""
    sql, params = _lease_sql(lease, recheck)
    return _answers().read_with_payload("i.id IN (SELECT item_id FROM lease)", [], answer_of=answer_of,
                             before=(f"WITH lease AS ({sql} RETURNING item_id)", params))


def renew(item: Item, user) -> bool:
    """Extend the user's lease while they work (drafts, heartbeats). False if they hold no active
    lease: an expired one is not revived, since its place may have gone to someone else."""
    now = timezone.now()
    return Lease.objects.filter(item=item, user=user, expires_at__gt=now).update(
        expires_at=now + lease_length(item.project)) > 0


def release(item: Item, user) -> None:
    """Give the item back to the queue (the reviewer closed it without answering)."""
    Lease.objects.filter(item=item, user=user).delete()


def skip(item: Item, user) -> None:
    """Release the item and remember the skip: it comes back to this user after everything else."""
    with transaction.atomic():
        release(item, user)
        Skip.objects.get_or_create(item=item, user=user)


def holds(item: Item, user) -> bool:
    return Lease.objects.filter(item=item, user=user, expires_at__gt=timezone.now()).exists()


def purge_expired(older_than: timedelta = timedelta(days=1)) -> int:
    """Delete leases that expired long ago (they no longer count anyway)."""
    deleted, _ = Lease.objects.filter(expires_at__lt=timezone.now() - older_than).delete()
    return deleted
