"""The review queue: which item a reviewer gets next, and leases on items.

Rules (project setting N = answers_per_item):
- a reviewer first gets back the item they already hold (an active lease they have not answered);
- otherwise the highest-priority open item that this reviewer has not answered, whose
  submitted answers plus other reviewers' active leases are fewer than N;
- ties go by import order (seq).

Concurrency: the candidate row is locked with SELECT ... FOR UPDATE SKIP LOCKED on
PostgreSQL, so concurrent claimers never take the same slot; submits lock the item
row and check the count again (annotation/answers.py). On SQLite every write
transaction is IMMEDIATE, which serialises claimers.
"""

from datetime import timedelta

from django.db import connection, transaction
from django.db.models import Count, Exists, F, IntegerField, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from .models import Answer, Item, Lease, Project


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
    expires = now + lease_length(project)
    with transaction.atomic():
        lease = current_lease(project, user, now)
        if lease is not None:
            Lease.objects.filter(pk=lease.pk).update(expires_at=expires)
            return lease.item
        qs = claimable(project, user, now)
        if connection.features.has_select_for_update_skip_locked:
            qs = qs.select_for_update(skip_locked=True, of=("self",))
        item = qs.first()
        if item is None:
            return None
        Lease.objects.update_or_create(item=item, user=user, defaults={"created_at": now, "expires_at": expires})
        return item


def renew(item: Item, user) -> bool:
    """Extend the user's lease while they work (drafts, heartbeats). False if they hold none."""
    expires = timezone.now() + lease_length(item.project)
    return Lease.objects.filter(item=item, user=user).update(expires_at=expires) > 0


def release(item: Item, user) -> None:
    """Skip: give the item back to the queue."""
    Lease.objects.filter(item=item, user=user).delete()


def holds(item: Item, user) -> bool:
    return Lease.objects.filter(item=item, user=user, expires_at__gt=timezone.now()).exists()


def purge_expired(older_than: timedelta = timedelta(days=1)) -> int:
    """Delete leases that expired long ago (they no longer count anyway)."""
    deleted, _ = Lease.objects.filter(expires_at__lt=timezone.now() - older_than).delete()
    return deleted
