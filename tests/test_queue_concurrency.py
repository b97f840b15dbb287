"""Many reviewers draining the queue at once: never more than N answers on an item, every item gets N.

Each thread has its own database connection (Django's connections are per
thread) and loops next_item + submit until the queue has nothing left for it.
PostgreSQL is the production case (SELECT ... FOR UPDATE SKIP LOCKED); the same
test runs on SQLite, where IMMEDIATE transactions and a busy timeout serialise
writers.
"""

import threading
import traceback
from collections import Counter

import pytest
from django.db import connection, connections

from annotation import answers, queue
from annotation.answers import AnswerError
from annotation.models import Answer, Item, Lease, Role

from .factories import add_member, full_answer, make_items, make_project

N = 2
ITEMS = 30


def on_postgres():
    return connection.vendor == "postgresql"


def run_workers(project, users_per_thread, *, rounds_limit=200):
    """Start one thread per entry of `users_per_thread`; each drains the queue as that user. Every other
    thread claims as the API does, the item read with its payload (on PostgreSQL in the lease's statement)."""
    start = threading.Barrier(len(users_per_thread))
    errors, conflicts = [], []
    submitted = Counter()

    def work(user, with_payload):
        try:
            start.wait(timeout=30)
            for _ in range(rounds_limit):
                item = queue.next_item(project, user, with_payload=with_payload)
                if item is None:
                    return
                try:
                    result = answers.submit(item, user, full_answer(item))
                except AnswerError as exc:
                    conflicts.append((user.username, item.pk, exc.status, exc.message))
                    continue
                if result.created:
                    submitted[user.username] += 1
            errors.append(f"{user.username}: still getting items after {rounds_limit} rounds")
        except BaseException:  # noqa: BLE001 - reported by the main thread
            errors.append(f"{user.username}:\n{traceback.format_exc()}")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work, args=(u, i % 2 == 1), name=f"worker-{i}")
               for i, u in enumerate(users_per_thread)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not any(t.is_alive() for t in threads), "a worker thread hung"
    return errors, conflicts, submitted


def check_invariants(project, errors, conflicts, submitted):
    assert not errors, "exceptions in worker threads:\n" + "\n".join(errors)
    # Nobody was handed an item and then told it was full.
    assert not conflicts, f"workers were handed items that were already full: {conflicts}"
    items = list(Item.objects.filter(project=project))
    real = Counter(
        Answer.objects.filter(item__project=project, status=Answer.Status.SUBMITTED).values_list("item_id", flat=True)
    )
    for item in items:
        assert real[item.pk] <= N, f"item {item.pk} has {real[item.pk]} answers"
        assert item.answer_count == real[item.pk], f"item {item.pk}: answer_count {item.answer_count}"
        assert real[item.pk] == N, f"item {item.pk} got {real[item.pk]} answers, not {N}"
        assert item.state in (Item.State.FINAL, Item.State.DONE)
    per_user_item = Counter(Answer.objects.filter(item__project=project).values_list("item_id", "user_id"))
    assert max(per_user_item.values()) == 1
    assert sum(submitted.values()) == N * len(items)
    # Every lease was consumed by a submit.
    assert not Lease.objects.filter(item__project=project).exists()


def setup_project(n_users):
    project = make_project(answers_per_item=N, name="Load")
    users = [add_member(project, Role.ANNOTATOR) for _ in range(n_users)]
    make_items(project, count=ITEMS, n_steps=2)
    return project, users


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_ten_reviewers_drain_the_queue_on_postgres():
    if not on_postgres():
        pytest.skip("needs PostgreSQL (set DATABASE_URL)")
    project, users = setup_project(10)
    check_invariants(project, *run_workers(project, users))


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_one_user_in_two_tabs_among_others_on_postgres():
    if not on_postgres():
        pytest.skip("needs PostgreSQL (set DATABASE_URL)")
    project, users = setup_project(8)
    # users[0] works in two threads at once (two browser tabs, or a script and a tab).
    check_invariants(project, *run_workers(project, [users[0], *users]))


@pytest.mark.django_db(transaction=True)
def test_ten_reviewers_drain_the_queue_on_sqlite():
    if connection.vendor != "sqlite":
        pytest.skip("the SQLite variant")
    project, users = setup_project(10)
    check_invariants(project, *run_workers(project, users))


@pytest.mark.django_db(transaction=True)
def test_one_user_in_two_tabs_among_others_on_sqlite():
    if connection.vendor != "sqlite":
        pytest.skip("the SQLite variant")
    project, users = setup_project(8)
    check_invariants(project, *run_workers(project, [users[0], *users]))


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_an_item_locked_by_a_submit_in_flight_is_waited_for_not_reported_as_none():
    """SKIP LOCKED passes over rows that a concurrent transaction holds; when that leaves nothing, the
    claimer waits for the locked candidate instead of telling the reviewer the queue is empty."""
    if not on_postgres():
        pytest.skip("needs PostgreSQL (set DATABASE_URL)")
    project = make_project(answers_per_item=2, name="Locked")
    first, second = add_member(project, Role.ANNOTATOR), add_member(project, Role.ANNOTATOR)
    (item,) = make_items(project, count=1, n_steps=2)
    assert queue.next_item(project, first).pk == item.pk
    locked, release = threading.Event(), threading.Event()
    errors = []

    def submit_slowly():
        try:
            from django.db import transaction

            with transaction.atomic():
                Item.objects.select_for_update().get(pk=item.pk)  # what a submit holds until commit
                locked.set()
                release.wait(timeout=30)
            answers.submit(item, first, full_answer(item))
        except BaseException:  # noqa: BLE001 - reported below
            errors.append(traceback.format_exc())
        finally:
            connections.close_all()

    thread = threading.Thread(target=submit_slowly)
    thread.start()
    assert locked.wait(timeout=30)
    got = []
    claimer = threading.Thread(target=lambda: (got.append(queue.next_item(project, second)), connections.close_all()))
    claimer.start()
    claimer.join(timeout=1.0)
    assert claimer.is_alive(), "the claimer should wait for the row lock, not give up"
    release.set()
    thread.join(timeout=30)
    claimer.join(timeout=30)
    assert not errors, errors
    assert got and got[0] is not None and got[0].pk == item.pk


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_change_of_n_and_a_rejection_on_the_same_item_do_not_wait_on_each_other():
    """The settings form holds the project's row while reresolve_project locks items; a rejection holds
    its item's row when the reopened item moves the queue's epoch. The epoch is not on the project's
    row, and reresolve_project moves it after its last item lock, so neither waits for the other in a
    cycle (PostgreSQL would break one off with a deadlock error)."""
    if not on_postgres():
        pytest.skip("needs PostgreSQL (set DATABASE_URL)")
    from annotation.models import Project

    project = make_project(answers_per_item=2, name="Settings")
    a, b = add_member(project, Role.ANNOTATOR), add_member(project, Role.ANNOTATOR)
    boss = add_member(project, Role.REVIEWER)
    (item,) = make_items(project, count=1, n_steps=2)
    for user in (a, b):
        assert queue.next_item(project, user).pk == item.pk
        answers.submit(item, user, full_answer(item))
    item.refresh_from_db()
    assert item.state != Item.State.OPEN
    rejection_holds_item, settings_hold_project = threading.Event(), threading.Event()
    errors = []

    def reject():
        from django.db import transaction

        try:
            with transaction.atomic():
                Item.objects.select_for_update().get(pk=item.pk)  # as review_answer takes it first
                rejection_holds_item.set()
                assert settings_hold_project.wait(timeout=30)
                answers.review_answer(Answer.objects.get(item=item, user=b), boss, accept=False)
        except BaseException:  # noqa: BLE001 - reported by the main thread
            errors.append(traceback.format_exc())
        finally:
            connections.close_all()

    def change_n():
        from django.db import transaction

        try:
            assert rejection_holds_item.wait(timeout=30)
            with transaction.atomic():  # as the settings form and the API do
                settings = Project.objects.get(pk=project.pk)
                settings.answers_per_item = 3
                settings.save()
                settings_hold_project.set()
                answers.reresolve_project(settings)  # waits for the rejection's item lock
        except BaseException:  # noqa: BLE001 - reported by the main thread
            errors.append(traceback.format_exc())
        finally:
            connections.close_all()

    threads = [threading.Thread(target=reject), threading.Thread(target=change_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, "\n".join(errors)
    item.refresh_from_db()
    assert item.state == Item.State.OPEN and item.answer_count == 1
