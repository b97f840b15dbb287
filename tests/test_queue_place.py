"""A claim starts at the reviewer's place in the queue (the first open item they have not answered), as
this process last found it, instead of walking past every open item they answered. It must hand out
exactly what a walk from the top would, whatever opened, moved or closed in between."""

import json
import random

import pytest
from django.db import connection

from annotation import answers, queue
from annotation.importing import import_path
from annotation.models import Answer, Item, Project, QueueEpoch, Role, Skip

from .factories import add_member, full_answer, make_items, make_project, trajectory


@pytest.fixture(autouse=True)
def _no_places_from_other_tests():
    queue._places.clear()
    yield
    queue._places.clear()


def epoch(project) -> int | None:
    return QueueEpoch.objects.filter(project=project).values_list("value", flat=True).first()


def from_the_top(project, user):
    """What next_item must give `user`, by the rule itself: their lease, else the best claimable item
    they did not skip, else the best one they skipped."""
    lease = queue.current_lease(project, user)
    if lease is not None:
        return lease.item_id
    ranked = list(queue.claimable(project, user).values_list("pk", flat=True))
    skipped = set(Skip.objects.filter(user=user, item_id__in=ranked).values_list("item_id", flat=True))
    ranked.sort(key=lambda pk: pk in skipped)  # stable: the skipped ones last, each group in queue order
    return ranked[0] if ranked else None


@pytest.mark.parametrize("seed, refresh_s", [(1, 0.0), (2, 0.0), (3, 3600.0), (4, 3600.0)])
def test_claims_from_the_place_agree_with_the_rule_through_every_change(db, monkeypatch, seed, refresh_s):
    """refresh_s 0: every claim finds the place anew; 3600: claims start where the place was last found
    (behind the reviewer's answers since) until something moves the epoch."""
    monkeypatch.setattr(queue, "PLACE_REFRESH_S", refresh_s)
    rng = random.Random(seed)
    project = make_project(answers_per_item=3)
    reviewers = [add_member(project, Role.ANNOTATOR) for _ in range(3)]
    boss = add_member(project, Role.REVIEWER)
    items = make_items(project, count=40, n_steps=1)
    Item.objects.bulk_update(
        [Item(pk=item.pk, project_id=project.pk, priority=rng.choice([0.0, 0.0, 0.3, 0.7])) for item in items],
        ["priority"])
    claims = 0
    # the first reviewer works alone for a while: a lead of open items it answered
    for _ in range(25):
        item = queue.next_item(project, reviewers[0])
        answers.submit(item, reviewers[0], full_answer(item))
    for _ in range(300):
        op = rng.random()
        if op < 0.75:
            user = rng.choice(reviewers[:1] * 3 + reviewers[1:])  # the first one stays ahead
            expected = from_the_top(project, user)
            item = queue.next_item(project, user)
            claims += 1
            assert (item.pk if item else None) == expected
            if item is not None:
                if rng.random() < 0.85:
                    answers.submit(item, user, full_answer(item))
                else:
                    queue.skip(item, user)
        elif op < 0.83:  # a reviewer rejects an answer: the item opens again, ahead of its author's place
            answer = Answer.objects.filter(item__project=project, status=Answer.Status.SUBMITTED).order_by("?").first()
            if answer is not None:
                answers.review_answer(answer, boss, accept=False)
        elif op < 0.91:  # a new score moves an item, possibly ahead of everyone's place
            target = Item.objects.filter(project=project).order_by("?").first()
            Item.objects.filter(pk=target.pk).update(priority=rng.choice([0.0, 0.3, 0.7, 0.9]))
        elif op < 0.96:  # new items, some of them urgent
            new = make_items(project, count=2, n_steps=1)
            Item.objects.bulk_update([Item(pk=n.pk, project_id=project.pk, priority=rng.choice([0.0, 0.9]))
                                      for n in new], ["priority"])
        else:  # the project asks for fewer or more answers: items settle or open again
            project.answers_per_item = rng.choice([2, 3])
            project.save(update_fields=["answers_per_item"])
            answers.reresolve_project(project)
    assert claims > 150
    assert queue._places, "the claims remembered places"


def test_a_lead_is_passed_once_then_claims_start_at_the_place(db, monkeypatch):
    monkeypatch.setattr(queue, "PLACE_REFRESH_S", 0.0)
    project = make_project(answers_per_item=2)
    me, other = add_member(project, Role.ANNOTATOR), add_member(project, Role.ANNOTATOR)
    items = make_items(project, count=30, n_steps=1)
    for _ in range(20):
        item = queue.next_item(project, me)
        answers.submit(item, me, full_answer(item))
    # the last claim found its place at the item it took, not yet answered then; the 19 before wait
    # for a second answer, and no claim passes them again
    assert queue._places[(project.pk, me.pk)][3] == (items[19].priority, items[19].seq)
    # the other reviewer answers the first ten: my place does not move, and I still get the 21st
    for _ in range(10):
        item = queue.next_item(project, other)
        answers.submit(item, other, full_answer(item))
    assert queue.next_item(project, me).pk == items[20].pk


def test_an_item_reopened_or_imported_ahead_of_the_place_is_served_first(db, tmp_path):
    project = make_project(answers_per_item=2)
    me, a, b = (add_member(project, Role.ANNOTATOR) for _ in range(3))
    boss = add_member(project, Role.REVIEWER)
    items = make_items(project, count=6, n_steps=1, with_prediction=False)  # priority 0: import order
    for user in (a, b):  # two others answer the first item: it has its N answers and leaves the queue
        item = queue.next_item(project, user)
        assert item.pk == items[0].pk
        answers.submit(item, user, full_answer(item))
    for _ in range(3):  # my claims find my place past it
        item = queue.next_item(project, me)
        answers.submit(item, me, full_answer(item))
    assert queue._places[(project.pk, me.pk)][3][1] > items[0].seq

    # b's answer is rejected: the first item opens again, ahead of my place, and it is mine to take
    answers.review_answer(Answer.objects.get(item=items[0], user=b), boss, accept=False)
    assert from_the_top(project, me) == items[0].pk
    item = queue.next_item(project, me)
    assert item.pk == items[0].pk
    answers.submit(item, me, full_answer(item))

    # a file with a scored item: its priority (the prediction's uncertainty) puts it first
    path = tmp_path / "urgent.jsonl"
    path.write_text(json.dumps(trajectory(2, tid="urgent")) + "\n")
    import_path(project, None, path)
    urgent = Item.objects.get(project=project, external_id="urgent")
    assert urgent.priority > 0
    assert queue.next_item(project, me).pk == urgent.pk


def test_writes_that_can_put_an_item_ahead_move_the_epoch_and_others_do_not(db):
    project = make_project(answers_per_item=1)
    me = add_member(project, Role.ANNOTATOR)
    items = make_items(project, count=3, n_steps=1)

    def moves(change) -> bool:
        before = epoch(project)
        change()
        return epoch(project) != before

    assert moves(lambda: make_items(project, count=1))  # a new open item
    assert moves(lambda: Item.objects.filter(pk=items[0].pk).update(priority=0.9))
    assert moves(lambda: Item.objects.bulk_update([Item(pk=items[1].pk, project_id=project.pk, priority=0.8)],
                                                  ["priority"]))
    assert not moves(lambda: Item.objects.filter(pk=items[2].pk).update(state=Item.State.DONE))
    assert moves(lambda: Item.objects.filter(pk=items[2].pk).update(state=Item.State.OPEN))
    assert not moves(lambda: Item.objects.filter(pk=items[2].pk).update(answer_count=0))
    item = queue.next_item(project, me)
    assert not moves(lambda: answers.submit(item, me, full_answer(item)))  # an answer closes (N = 1)
    boss = add_member(project, Role.REVIEWER)
    answer = Answer.objects.get(item=item, user=me)
    assert moves(lambda: answers.review_answer(answer, boss, accept=False))  # the item opens again


def test_a_change_made_around_the_app_is_caught_when_the_place_expires(db, monkeypatch):
    """SQL run by hand does not move the epoch; the place is found from the top again after
    PLACE_TTL_S, so such an item waits at most that long."""
    project = make_project(answers_per_item=2)
    me = add_member(project, Role.ANNOTATOR)
    items = make_items(project, count=5, n_steps=1)
    for _ in range(3):
        item = queue.next_item(project, me)
        answers.submit(item, me, full_answer(item))
    with connection.cursor() as cursor:  # behind the ORM's back: the first item gets the top priority
        cursor.execute(f"UPDATE {Item._meta.db_table} SET priority = 9 WHERE id = %s", [items[4].pk])
    monkeypatch.setattr(queue, "PLACE_TTL_S", 0.0)
    assert queue.next_item(project, me).pk == items[4].pk


def test_a_deleted_reviewer_leaves_no_place_behind(db):
    project = make_project(answers_per_item=2)
    me = add_member(project, Role.ANNOTATOR)
    make_items(project, count=2, n_steps=1)
    queue.next_item(project, me)
    assert (project.pk, me.pk) in queue._places
    me.delete()
    assert all(user_id != me.pk for _, user_id in queue._places)


def test_a_claim_in_a_project_deleted_meanwhile_finds_nothing(db):
    project = make_project(answers_per_item=2)
    me = add_member(project, Role.ANNOTATOR)
    make_items(project, count=2, n_steps=1)
    Project.objects.filter(pk=project.pk).delete()
    assert queue.next_item(project, me) is None


@pytest.mark.django_db(transaction=True)
def test_the_migration_gives_every_existing_project_an_epoch():
    """Projects made before the epoch existed get one, so their reviewers' places are remembered from
    the first claim on (without one, nothing would be until an item opened or moved)."""
    from django.db.migrations.executor import MigrationExecutor

    before = [("annotation", "0006_drop_indexes_covered_by_longer_ones")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old = executor.loader.project_state(before).apps.get_model("annotation", "Project")
    pk = old.objects.create(name="made before the epoch").pk
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())
    assert QueueEpoch.objects.filter(project_id=pk).count() == 1
