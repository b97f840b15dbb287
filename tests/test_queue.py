"""The review queue: order, N answers per item, leases, skips, and submits to a full item."""

from datetime import timedelta

import pytest
from django.utils import timezone

from annotation import answers, queue
from annotation.answers import AnswerError
from annotation.models import Answer, Final, Item, Lease, Role

from .factories import add_member, full_answer, make_items, make_project


@pytest.fixture
def n2(db):
    project = make_project(answers_per_item=2)
    users = [add_member(project, Role.ANNOTATOR) for _ in range(4)]
    return project, users


def set_priorities(items, priorities):
    for item, p in zip(items, priorities):
        Item.objects.filter(pk=item.pk).update(priority=p)


def drain_order(project, user):
    """The order in which `user` gets items when answering each at once."""
    order = []
    while (item := queue.next_item(project, user)) is not None:
        order.append(item.pk)
        answers.submit(item, user, full_answer(item))
        assert len(order) < 100
    return order


def test_higher_priority_first_then_import_order(db):
    project = make_project(answers_per_item=1)
    user = add_member(project, Role.ANNOTATOR)
    items = make_items(project, count=5)
    set_priorities(items, [0.1, 0.9, 0.5, 0.9, 0.1])
    expected = [items[1].pk, items[3].pk, items[2].pk, items[0].pk, items[4].pk]
    assert list(queue.claimable(project, user).values_list("pk", flat=True)) == expected
    assert drain_order(project, user) == expected


def test_a_new_urgent_item_jumps_the_queue_but_not_a_held_lease(db):
    project = make_project(answers_per_item=1)
    user = add_member(project, Role.ANNOTATOR)
    items = make_items(project, count=2)
    set_priorities(items, [0.2, 0.1])
    held = queue.next_item(project, user)
    assert held.pk == items[0].pk
    urgent = make_items(project, count=1)[0]
    set_priorities([urgent], [5.0])
    assert queue.next_item(project, user).pk == held.pk  # resume first
    answers.submit(held, user, full_answer(held))
    assert queue.next_item(project, user).pk == urgent.pk


def test_only_open_live_items_of_the_project_are_handed_out(db):
    project = make_project(answers_per_item=1)
    other = make_project(name="Other", answers_per_item=1)
    user = add_member(project, Role.ANNOTATOR)
    staged, done, final, open_ = make_items(project, count=4)
    Item.objects.filter(pk=staged.pk).update(state=Item.State.STAGED, priority=9)
    Item.objects.filter(pk=done.pk).update(state=Item.State.DONE, priority=9)
    Item.objects.filter(pk=final.pk).update(state=Item.State.FINAL, priority=9)
    make_items(other, count=2)
    assert queue.next_item(project, user).pk == open_.pk


def test_one_reviewer_never_gets_an_item_they_answered(n2):
    project, (a, b, c, d) = n2
    items = make_items(project, count=3)
    first = queue.next_item(project, a)
    answers.submit(first, a, full_answer(first))
    seen = set()
    while (item := queue.next_item(project, a)) is not None:
        assert item.pk != first.pk
        assert item.pk not in seen
        seen.add(item.pk)
        answers.submit(item, a, full_answer(item))
    assert seen == {i.pk for i in items} - {first.pk}
    # every item still needs a second answer, but not from `a`
    assert queue.next_item(project, a) is None
    assert not queue.claimable(project, a).exists()
    assert queue.next_item(project, b) is not None


def test_a_rejected_answer_does_not_bring_the_item_back_to_its_author(n2):
    project, (a, b, c, d) = n2
    reviewer = add_member(project, Role.REVIEWER)
    item = make_items(project, count=1)[0]
    answers.submit(item, a, full_answer(item))
    answers.review_answer(Answer.objects.get(item=item, user=a), reviewer, accept=False)
    assert queue.next_item(project, a) is None
    assert queue.next_item(project, b).pk == item.pk


def test_n_answers_per_item_are_honored(n2):
    project, (a, b, c, d) = n2
    first, second = make_items(project, count=2)
    set_priorities([first, second], [1.0, 0.0])
    # Two people hold the first item: together they fill its two slots.
    assert queue.next_item(project, a).pk == first.pk
    assert queue.next_item(project, b).pk == first.pk
    assert queue.next_item(project, c).pk == second.pk
    answers.submit(first, a, full_answer(first))
    answers.submit(first, b, full_answer(first))
    first.refresh_from_db()
    assert first.answer_count == 2
    assert first.state == Item.State.FINAL
    # Nobody else gets the full item.
    assert queue.next_item(project, d).pk == second.pk
    assert not queue.claimable(project, d).filter(pk=first.pk).exists()


def test_one_answer_per_item_with_n_1(db):
    project = make_project(answers_per_item=1)
    a, b = add_member(project, Role.ANNOTATOR), add_member(project, Role.ANNOTATOR)
    only = make_items(project, count=1)[0]
    assert queue.next_item(project, a).pk == only.pk
    assert queue.next_item(project, b) is None


def test_a_lease_is_resumed_and_renewed(n2):
    project, (a, b, c, d) = n2
    make_items(project, count=3)
    item = queue.next_item(project, a)
    lease = Lease.objects.get(item=item, user=a)
    Lease.objects.filter(pk=lease.pk).update(expires_at=timezone.now() + timedelta(minutes=1))
    again = queue.next_item(project, a)
    assert again.pk == item.pk
    assert Lease.objects.filter(user=a).count() == 1
    renewed = Lease.objects.get(pk=lease.pk).expires_at
    assert renewed > timezone.now() + timedelta(minutes=project.lease_minutes - 1)
    assert queue.holds(item, a)


def test_an_expired_lease_returns_the_item_to_the_queue(db):
    project = make_project(answers_per_item=1)
    a, b = add_member(project, Role.ANNOTATOR), add_member(project, Role.ANNOTATOR)
    only = make_items(project, count=1)[0]
    assert queue.next_item(project, a).pk == only.pk
    assert queue.next_item(project, b) is None
    Lease.objects.filter(item=only, user=a).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert not queue.holds(only, a)
    assert queue.next_item(project, b).pk == only.pk
    # `a` lost the item: their next claim does not resume it while `b` holds it.
    assert queue.next_item(project, a) is None


def test_an_expired_lease_of_the_same_user_is_claimed_again(db):
    project = make_project(answers_per_item=1)
    a = add_member(project, Role.ANNOTATOR)
    only = make_items(project, count=1)[0]
    queue.next_item(project, a)
    Lease.objects.filter(item=only, user=a).update(expires_at=timezone.now() - timedelta(minutes=5))
    assert queue.next_item(project, a).pk == only.pk
    assert Lease.objects.filter(item=only, user=a).count() == 1
    assert Lease.objects.get(item=only, user=a).expires_at > timezone.now()


def test_purge_removes_only_long_expired_leases(n2):
    project, (a, b, c, d) = n2
    x, y, z = make_items(project, count=3)
    now = timezone.now()
    Lease.objects.create(item=x, user=a, expires_at=now - timedelta(days=2))
    Lease.objects.create(item=y, user=a, expires_at=now - timedelta(hours=1))
    Lease.objects.create(item=z, user=a, expires_at=now + timedelta(hours=1))
    assert queue.purge_expired() == 1
    assert set(Lease.objects.values_list("item_id", flat=True)) == {y.pk, z.pk}


def test_skip_releases_the_item(db):
    project = make_project(answers_per_item=1)
    a, b = add_member(project, Role.ANNOTATOR), add_member(project, Role.ANNOTATOR)
    first, second = make_items(project, count=2)
    assert queue.next_item(project, a).pk == first.pk
    assert queue.next_item(project, b).pk == second.pk
    queue.release(first, a)
    assert not Lease.objects.filter(item=first, user=a).exists()
    c = add_member(project, Role.ANNOTATOR)
    assert queue.next_item(project, c).pk == first.pk


def test_a_draft_renews_the_lease(db):
    project = make_project(answers_per_item=1)
    a = add_member(project, Role.ANNOTATOR)
    item = make_items(project, count=1)[0]
    queue.next_item(project, a)
    soon = timezone.now() + timedelta(seconds=30)
    Lease.objects.filter(item=item, user=a).update(expires_at=soon)
    answers.save_draft(item, a, {"steps": [{"step": 0, "verdict": "agree"}]})
    assert Lease.objects.get(item=item, user=a).expires_at > soon + timedelta(minutes=1)


def test_submit_to_a_full_item_is_refused_and_the_draft_kept(n2):
    project, (a, b, c, d) = n2
    item = make_items(project, count=1)[0]
    # `c` took the item, wrote a draft, and its lease ran out while `a` and `b` answered.
    assert queue.next_item(project, c).pk == item.pk
    draft = {"steps": [{"step": 0, "verdict": "disagree", "reason": "half done"}], "notes": "wip"}
    answers.save_draft(item, c, draft)
    Lease.objects.filter(item=item, user=c).update(expires_at=timezone.now() - timedelta(seconds=1))
    for u in (a, b):
        assert queue.next_item(project, u).pk == item.pk
        answers.submit(item, u, full_answer(item))
    with pytest.raises(AnswerError) as err:
        answers.submit(item, c, full_answer(item, "disagree"))
    assert err.value.status == 409
    kept = Answer.objects.get(item=item, user=c)
    assert kept.status == Answer.Status.DRAFT
    assert kept.data["notes"] == "wip"
    assert kept.data["steps"][0]["reason"] == "half done"
    item.refresh_from_db()
    assert item.answer_count == 2
    assert Answer.objects.filter(item=item, status=Answer.Status.SUBMITTED).count() == 2
    # the user simply moves on
    assert queue.next_item(project, c) is None


def test_a_double_submit_counts_once(db):
    project = make_project(answers_per_item=2)
    a = add_member(project, Role.ANNOTATOR)
    item = make_items(project, count=1)[0]
    queue.next_item(project, a)
    assert answers.submit(item, a, full_answer(item)).created is True
    assert answers.submit(item, a, full_answer(item)).created is False
    item.refresh_from_db()
    assert item.answer_count == 1
    assert not Lease.objects.filter(item=item, user=a).exists()


def test_claim_skips_excluded_items_and_does_not_resume(db):
    project = make_project(answers_per_item=1)
    a = add_member(project, Role.ANNOTATOR)
    first, second, third = make_items(project, count=3)
    assert queue.next_item(project, a).pk == first.pk
    # claim() is the queue's rule minus `exclude` (the user's own lease does not hide an item from them)
    assert queue.claim(project, a, exclude=[second.pk]).pk == first.pk
    assert queue.claim(project, a, exclude=[first.pk, second.pk]).pk == third.pk
    assert queue.claim(project, a, exclude=[first.pk, second.pk, third.pk]) is None
    assert set(Lease.objects.filter(user=a).values_list("item_id", flat=True)) == {first.pk, third.pk}


# --- skips, lease renewal, changing N ------------------------------------------------


def test_a_skipped_item_comes_back_only_when_nothing_else_is_left(db):
    project = make_project()
    user = add_member(project, Role.ANNOTATOR)
    first, second = make_items(project, count=2, with_prediction=False)
    assert queue.next_item(project, user) == first
    queue.skip(first, user)
    assert queue.next_item(project, user) == second
    answers.submit(second, user, full_answer(second))
    assert queue.next_item(project, user) == first  # only the skipped one is left


def test_a_skip_is_personal(db):
    project = make_project()
    a, b = add_member(project, Role.ANNOTATOR), add_member(project, Role.ANNOTATOR)
    first, _second = make_items(project, count=2, with_prediction=False)
    assert queue.next_item(project, a) == first
    queue.skip(first, a)
    assert queue.next_item(project, b) == first


def test_renew_does_not_revive_an_expired_lease(db):
    project = make_project()
    user = add_member(project, Role.ANNOTATOR)
    item = make_items(project, count=1)[0]
    queue.next_item(project, user)
    assert queue.renew(item, user)
    Lease.objects.filter(item=item, user=user).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert not queue.renew(item, user)
    assert not queue.holds(item, user)


def test_a_submit_without_a_lease_cannot_take_a_place_someone_holds(db):
    project = make_project()
    holder, intruder = add_member(project, Role.ANNOTATOR), add_member(project, Role.ANNOTATOR)
    item = make_items(project, count=1)[0]
    assert queue.next_item(project, holder) == item
    with pytest.raises(AnswerError) as exc:
        answers.submit(item, intruder, full_answer(item))
    assert exc.value.status == 409
    assert answers.submit(item, holder, full_answer(item)).created


def test_raising_answers_per_item_reopens_settled_items(db):
    project = make_project(answers_per_item=1)
    a, b = add_member(project, Role.ANNOTATOR), add_member(project, Role.ANNOTATOR)
    item = make_items(project, count=1)[0]
    answers.submit(item, a, full_answer(item))
    item.refresh_from_db()
    assert item.state == Item.State.FINAL
    project.answers_per_item = 2
    project.save()
    assert answers.reresolve_project(project) == 1
    item.refresh_from_db()
    assert item.state == Item.State.OPEN and not Final.objects.filter(item=item).exists()
    assert queue.next_item(project, b) == item
    answers.submit(item, b, full_answer(item))
    item.refresh_from_db()
    assert item.state == Item.State.FINAL and item.answer_count == 2


def test_lowering_answers_per_item_settles_items_that_now_have_enough(db):
    project = make_project(answers_per_item=2)
    a = add_member(project, Role.ANNOTATOR)
    item = make_items(project, count=1)[0]
    answers.submit(item, a, full_answer(item))
    item.refresh_from_db()
    assert item.state == Item.State.OPEN
    project.answers_per_item = 1
    project.save()
    answers.reresolve_project(project)
    item.refresh_from_db()
    assert item.state == Item.State.FINAL
    assert item.final.method == "unanimous"
