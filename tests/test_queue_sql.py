"""claim() and current_lease() run the queue's rule as SQL (annotation.queue._claimable_sql); it must
agree with the claimable() queryset, which states the rule, item by item and in order."""

from datetime import timedelta

from django.db import connection
from django.utils import timezone

from annotation import queue
from annotation.models import Answer, Item, Lease, Role, Skip

from .factories import add_member, make_items, make_project


def _sql_claimable(project, user, now, item):
    sql, params = queue._claimable_sql(project, user, now, pk=item.pk, select="exists")
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone() is not None


def test_the_sql_rule_agrees_with_claimable(db):
    project = make_project(answers_per_item=2)
    me, other, third = (add_member(project, Role.ANNOTATOR) for _ in range(3))
    items = make_items(project, count=10)
    now = timezone.now()
    for item, priority in zip(items, [0.5, 0.9, 0.1, 0.9, 0.3, 0.7, 0.2, 0.9, 0.4, 0.6]):
        Item.objects.filter(pk=item.pk).update(priority=priority)
    Answer.objects.create(item=items[0], user=me, status=Answer.Status.SUBMITTED, data={})  # answered by me
    Answer.objects.create(item=items[1], user=me, status=Answer.Status.DRAFT, data={})  # a draft does not count
    Item.objects.filter(pk=items[2].pk).update(answer_count=1)
    Lease.objects.create(item=items[2], user=other, expires_at=now + timedelta(minutes=5))  # 1 + 1 held: full
    Lease.objects.create(item=items[3], user=other, expires_at=now - timedelta(minutes=5))  # expired: free
    Lease.objects.create(item=items[4], user=me, expires_at=now + timedelta(minutes=5))  # my own lease
    Lease.objects.create(item=items[5], user=other, expires_at=now + timedelta(minutes=5))
    Lease.objects.create(item=items[5], user=third, expires_at=now + timedelta(minutes=5))  # two held: full
    Item.objects.filter(pk=items[6].pk).update(state=Item.State.DONE)
    Item.objects.filter(pk=items[7].pk).update(state=Item.State.STAGED)
    Skip.objects.create(item=items[8], user=me)

    expected = set(queue.claimable(project, me, now).values_list("pk", flat=True))
    assert expected == {items[i].pk for i in (1, 3, 4, 8, 9)}
    assert {item.pk for item in items if _sql_claimable(project, me, now, item)} == expected

    # claim() goes by priority, then import order, the skipped item last, and honours `exclude`
    order, passed = [], []
    while (item := queue.claim(project, me, exclude=passed, now=now)) is not None:
        order.append(item.pk)
        passed.append(item.pk)
    ranked = list(queue.claimable(project, me, now).exclude(pk=items[8].pk).values_list("pk", flat=True))
    assert order == ranked + [items[8].pk]


def test_current_lease_is_the_oldest_active_unanswered_one(db):
    project = make_project(answers_per_item=2)
    me = add_member(project, Role.ANNOTATOR)
    items = make_items(project, count=4)
    now = timezone.now()
    assert queue.current_lease(project, me, now) is None
    Lease.objects.create(item=items[0], user=me, created_at=now - timedelta(minutes=9),
                         expires_at=now - timedelta(minutes=1))  # expired
    Lease.objects.create(item=items[1], user=me, created_at=now - timedelta(minutes=8),
                         expires_at=now + timedelta(minutes=5))
    Answer.objects.create(item=items[1], user=me, status=Answer.Status.SUBMITTED, data={})  # answered
    Lease.objects.create(item=items[2], user=me, created_at=now - timedelta(minutes=3),
                         expires_at=now + timedelta(minutes=5))
    Lease.objects.create(item=items[3], user=me, created_at=now - timedelta(minutes=2),
                         expires_at=now + timedelta(minutes=5))
    lease = queue.current_lease(project, me, now)
    assert lease.item_id == items[2].pk and lease.expires_at > now
    Item.objects.filter(pk=items[2].pk).update(state=Item.State.DONE)
    assert queue.current_lease(project, me, now).item_id == items[3].pk


def test_rawsql_reads_rows_as_the_orm_does(db):
    """annotation.rawsql builds instances from hand-written SQL: the same values as the ORM reads,
    JSON decoded and datetimes aware on every backend, extra columns through their field's converters."""
    from annotation import rawsql
    from annotation.answers import live_item, own_answers
    from annotation.models import ItemPayload

    project = make_project(answers_per_item=2)
    me = add_member(project, Role.ANNOTATOR)
    item = make_items(project, count=1)[0]
    answer = Answer.objects.create(item=item, user=me, status=Answer.Status.DRAFT,
                                   data={"steps": [{"step": 0, "verdict": "agree"}], "notes": "ü"})
    lease = Lease.objects.create(item=item, user=me, expires_at=timezone.now() + timedelta(minutes=5))

    read = rawsql.first(Lease, rawsql.select(Lease, "id = %s"), [lease.pk])
    expected = Lease.objects.get(pk=lease.pk)
    assert [getattr(read, f.attname) for f in Lease._meta.concrete_fields] == \
           [getattr(expected, f.attname) for f in Lease._meta.concrete_fields]
    assert timezone.is_aware(read.expires_at) and not read._state.adding

    (mine,) = own_answers(item, me)
    assert mine.data == answer.data and mine.user is me and timezone.is_aware(mine.created_at)

    found = live_item(project, item.pk)
    assert found.payload.data == ItemPayload.objects.get(item=item).data and found.state == item.state
    assert live_item(project, 2**63) is None and live_item(make_project(name="Other"), item.pk) is None
    Item.objects.filter(pk=item.pk).update(state=Item.State.STAGED)
    assert live_item(project, item.pk) is None  # staged rows of a running import are invisible
    assert rawsql.rows(Item, rawsql.select(Item, "id = %s"), [-1]) == []


def test_a_submit_without_time_spent_counts_it_from_the_lease(db):
    """submit() reads the reviewer's lease in one aggregate, with their answer (answers._own_answer_and_leases):
    when the client sends no
    time spent, the answer gets the time since the lease began, on every backend."""
    from annotation.answers import submit

    from .factories import full_answer

    project = make_project(answers_per_item=1)
    me = add_member(project, Role.ANNOTATOR)
    make_items(project, count=1)
    item = queue.next_item(project, me)
    Lease.objects.filter(item=item, user=me).update(created_at=timezone.now() - timedelta(seconds=42))
    item = Item.objects.select_related("project", "payload").get(pk=item.pk)
    answer = submit(item, me, full_answer(item), time_spent_ms=0).answer
    assert 42_000 <= answer.time_spent_ms < 60_000
    assert not Lease.objects.filter(item=item, user=me).exists()


def test_an_item_read_with_its_payload_carries_the_readers_answer(db):
    """attach_payload(answer_of=user) reads the user's answer in the same row (joined columns through
    rawsql.take_joined): their draft when they have one, none when they have not, never someone else's."""
    from annotation.answers import attach_payload, own_answers

    project = make_project(answers_per_item=2)
    me, other = add_member(project, Role.ANNOTATOR), add_member(project, Role.ANNOTATOR)
    item = make_items(project, count=1)[0]
    Answer.objects.create(item=item, user=other, status=Answer.Status.SUBMITTED, data={"steps": [], "notes": "x"})
    bare = Item.objects.get(pk=item.pk)
    attach_payload(bare, answer_of=me)
    assert own_answers(bare, me) == [] and bare.payload.data == item.payload.data
    draft = Answer.objects.create(item=item, user=me, status=Answer.Status.DRAFT,
                                  data={"steps": [{"step": 0, "verdict": "agree"}], "notes": "ü"})
    bare = attach_payload(Item.objects.get(pk=item.pk), answer_of=me)
    (mine,) = own_answers(bare, me)
    assert (mine.pk, mine.data, mine.user) == (draft.pk, draft.data, me)
    assert timezone.is_aware(mine.created_at) and not mine._state.adding
    # what was read for one user is not handed to another
    assert [a.user_id for a in own_answers(bare, other)] == [other.pk]


def test_a_lease_is_stored_only_when_its_recheck_still_finds_the_item(db):
    """claim() stores the lease in the statement that re-checks the rule once the row lock is held
    (queue._lease): when the re-check finds the item gone (its places taken meanwhile) nothing is stored."""
    project = make_project(answers_per_item=1)
    me, other = add_member(project, Role.ANNOTATOR), add_member(project, Role.ANNOTATOR)
    item = make_items(project, count=1)[0]
    now = timezone.now()
    lease = Lease(item=item, user=me, created_at=now, expires_at=now + timedelta(minutes=5))
    Lease.objects.create(item=item, user=other, expires_at=now + timedelta(minutes=5))  # the only place is held
    recheck = queue._claimable_sql(project, me, now, pk=item.pk, select="exists")
    assert queue._lease(lease, recheck=recheck) is False
    assert not Lease.objects.filter(user=me).exists()
    Lease.objects.filter(user=other).delete()
    recheck = queue._claimable_sql(project, me, now, pk=item.pk, select="exists")
    assert queue._lease(lease, recheck=recheck) is True
    assert Lease.objects.get(user=me).expires_at == lease.expires_at
    # an expired lease of the same user on the item is taken over, not doubled
    Lease.objects.filter(user=me).update(expires_at=now - timedelta(minutes=1))
    assert queue._lease(lease) is True and Lease.objects.filter(user=me).count() == 1


def test_next_item_with_payload_claims_and_reads_in_one_go(db):
    """next_item(with_payload=True) hands over the item with its payload, newest prediction and the
    reader's own answer, whether it claims the item (on PostgreSQL in the lease's statement) or resumes
    a lease; a claim whose re-check fails stores no lease and reads nothing."""
    from annotation.answers import latest_prediction, own_answers

    project = make_project(answers_per_item=1)
    me, other = add_member(project, Role.ANNOTATOR), add_member(project, Role.ANNOTATOR)
    first, second = make_items(project, count=2)
    draft = Answer.objects.create(item=first, user=me, status=Answer.Status.DRAFT,
                                  data={"steps": [{"step": 0, "verdict": "agree"}], "notes": "later"})
    claimed = queue.next_item(project, me, with_payload=True, answer_of=me)
    assert claimed.pk == first.pk and claimed.payload.data == first.payload.data
    assert latest_prediction(claimed).pk == latest_prediction(Item.objects.get(pk=first.pk)).pk
    assert [a.pk for a in own_answers(claimed, me)] == [draft.pk]
    assert claimed.claimed_lease.expires_at == Lease.objects.get(item=first, user=me).expires_at
    resumed = queue.next_item(project, me, with_payload=True)  # the held lease again, read the same way
    assert resumed.pk == first.pk and resumed.payload.data == first.payload.data
    # the re-check after the row lock: the only place on `second` went to `other` meanwhile
    now = timezone.now()
    Lease.objects.create(item=second, user=other, expires_at=now + timedelta(minutes=5))
    lease = Lease(item=second, user=me, created_at=now, expires_at=now + timedelta(minutes=5))
    recheck = queue._claimable_sql(project, me, now, pk=second.pk, select="exists")
    if connection.vendor == "postgresql":
        assert queue._lease_and_read(lease, recheck, me) is None
    else:
        assert queue._lease(lease, recheck=recheck) is False
    assert not Lease.objects.filter(item=second, user=me).exists()


def test_a_submit_writes_the_answer_lease_count_and_event_together(db):
    """submit() stores the answer (new, or the reviewer's draft), drops their lease, counts the answer
    on the item and records the audit event naming the answer: on PostgreSQL in one statement
    (answers._store_submitted), elsewhere one by one; the same rows either way."""
    from annotation.answers import submit
    from annotation.models import AuditEvent

    from .factories import full_answer

    project = make_project(answers_per_item=3)
    me, other = add_member(project, Role.ANNOTATOR), add_member(project, Role.ANNOTATOR)
    fresh, drafted = make_items(project, count=2)
    Answer.objects.create(item=drafted, user=other, status=Answer.Status.DRAFT, data={"steps": [], "notes": ""})
    for item in (fresh, drafted):
        who = me if item is fresh else other
        Lease.objects.create(item=item, user=who, expires_at=timezone.now() + timedelta(minutes=5))
        result = submit(Item(pk=item.pk, project=project), who, full_answer(item), time_spent_ms=1234)
        stored = Answer.objects.get(item=item, user=who)
        assert result.created and result.answer.pk == stored.pk and not result.answer._state.adding
        assert stored.status == Answer.Status.SUBMITTED and len(stored.data["steps"]) == item.step_count
        assert stored.submitted_at is not None and stored.time_spent_ms == 1234
        assert not Lease.objects.filter(item=item, user=who).exists()
        assert Item.objects.get(pk=item.pk).answer_count == 1
        event = AuditEvent.objects.get(verb="answer.submitted", object_id=str(stored.pk))
        assert (event.actor, event.project_id, event.object_type, event.after) == (who, project.pk, "answer",
                                                                                 stored.data)
    assert Answer.objects.count() == 2 and AuditEvent.objects.filter(verb="answer.submitted").count() == 2


def test_the_review_loop_runs_prepared_on_postgresql(db):
    """On PostgreSQL (DATABASE_PREPARED_STATEMENTS, on by default) the loop's statements are prepared on
    the connection once they ran a few times, and give the same results prepared as before; all but the
    queue's candidate walk, which is planned on each run (rawsql.planned_each_run)."""
    import pytest

    if connection.vendor != "postgresql" or not connection.settings_dict["OPTIONS"].get("prepare_threshold"):
        pytest.skip("needs PostgreSQL with prepared statements on")
    from annotation.answers import submit

    from .factories import full_answer

    project = make_project(answers_per_item=1)
    me = add_member(project, Role.ANNOTATOR)
    make_items(project, count=8)
    for _ in range(8):
        item = queue.next_item(project, me)
        assert item is not None and submit(Item(pk=item.pk, project=project), me, full_answer(item)).created
    assert queue.next_item(project, me) is None  # each item answered once, in order, then nothing left
    assert Answer.objects.filter(user=me).count() == 8
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [row[0] for row in cursor.fetchall()]
    assert any(sql.endswith("FOR UPDATE OF i") for sql in prepared), prepared  # the submit's locked read
    assert not any("SKIP LOCKED" in sql for sql in prepared), prepared  # the candidate walk
    assert connection.connection.prepare_threshold == 5  # back after each walk
