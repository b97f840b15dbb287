"""The review queue: which item a reviewer gets next, and leases on items.

Rules (project setting N = answers_per_item):
- a reviewer first gets back the item they already hold (an active lease they have not answered);
- otherwise the highest-priority open item that this reviewer has not answered, whose
  submitted answers plus other reviewers' active leases are fewer than N;
- ties go by import order (seq); items the reviewer skipped come back to them only when
  nothing else is left.

Concurrency: the candidate row is locked with SELECT ... FOR UPDATE SKIP LOCKED on
PostgreSQL and, once locked, counted again by a fresh query (claim()), so concurrent
claimers never take the same slot; submits lock the item
row and check the count again (annotation/answers.py). On SQLite every write
transaction is IMMEDIATE, which serialises claimers.
"""

from datetime import timedelta

from django.db import connection, transaction
from django.db.models import Count, Exists, F, IntegerField, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from .models import Answer, Item, Lease, Project, Skip


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
    now = now or timezone.now()
    return (
        Lease.objects.filter(item__project=project, user=user, expires_at__gt=now, item__state=Item.State.OPEN)
        .exclude(Exists(Answer.objects.filter(item=OuterRef("item"), user=user).exclude(status=Answer.Status.DRAFT)))
        .select_related("item")
        .order_by("created_at")
        .first()
    )


def next_item(project: Project, user) -> Item | None:
    """Claim (or resume) the next item for `user`; None when nothing is left for them."""
    now = timezone.now()
    with transaction.atomic():
        lease = current_lease(project, user, now)
        if lease is not None:
            Lease.objects.filter(pk=lease.pk).update(expires_at=now + lease_length(project))
            return lease.item
        return claim(project, user, now=now)


def claim(project: Project, user, *, exclude=(), now=None) -> Item | None:
    """Lease the best claimable item outside `exclude` to `user` (no resume); None if there is none."""
    now = now or timezone.now()
    locking = connection.features.has_select_for_update_skip_locked
    passed = list(exclude)
    skipped = Exists(Skip.objects.filter(item=OuterRef("pk"), user=user))
    # Items the user skipped come last: first everything else (in index order), then the skipped ones.
    passes = [lambda qs: qs.exclude(skipped), lambda qs: qs.filter(skipped)]
    with transaction.atomic():
        while True:
            item = None
            for restrict in passes:
                qs = restrict(claimable(project, user, now)).exclude(pk__in=passed)
                if locking:
                    qs = qs.select_for_update(skip_locked=True, of=("self",))
                item = qs.first()
                if item is not None:
                    break
            if item is None:
                return None
            # Under READ COMMITTED the candidate query counts leases and answers in a snapshot
            # taken before it locked the row: a claimer or submitter that committed in between
            # is not counted. Everyone who changes an item's count holds its row lock until
            # commit, so a fresh query now that we hold the lock sees them all.
            if not locking or claimable(project, user, now).filter(pk=item.pk).exists():
                break
            passed.append(item.pk)
        Lease.objects.update_or_create(
            item=item, user=user, defaults={"created_at": now, "expires_at": now + lease_length(project)}
        )
    return item


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
