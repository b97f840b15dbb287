"""Project progress and agreement, as shown on the dashboard and returned by the API."""

from django.contrib.auth import get_user_model
from django.db.models import Avg, Count, Q, Sum

from .agreement import AlphaAccumulator, percent_agreement
from .models import Answer, Final, Item, Project


def project_stats(project: Project) -> dict:
    n = project.answers_per_item
    items = Item.objects.live().filter(project=project)
    counts = items.aggregate(
        total=Count("pk"),
        open=Count("pk", filter=Q(state=Item.State.OPEN)),
        done=Count("pk", filter=Q(state=Item.State.DONE)),
        final=Count("pk", filter=Q(state=Item.State.FINAL)),
        answers=Sum("answer_count"),
        steps=Sum("step_count"),
    )
    total = counts["total"] or 0
    answers = counts["answers"] or 0
    per_user = (
        Answer.objects.filter(item__project=project, status=Answer.Status.SUBMITTED)
        .values("user")
        .annotate(answers=Count("pk"), avg_ms=Avg("time_spent_ms"))
        .order_by("-answers")
    )
    users = get_user_model().objects.in_bulk([row["user"] for row in per_user])
    annotators = [
        {
            "user_id": row["user"],
            "username": users[row["user"]].username if row["user"] in users else "?",
            "answers": row["answers"],
            "avg_seconds": round((row["avg_ms"] or 0) / 1000, 1),
        }
        for row in per_user
    ]
    agreement = project_agreement(project) if n > 1 else {"alpha": None, "percent": None, "items": 0}
    disagreements = items.filter(
        Q(state=Item.State.DONE) | Q(state=Item.State.FINAL, final__method=Final.Method.MAJORITY)
    ).count()
    return {
        "items": total,
        "steps": counts["steps"] or 0,
        "open": counts["open"] or 0,
        "done": counts["done"] or 0,
        "final": counts["final"] or 0,
        "answers": answers,
        "answers_needed": total * n,
        "answers_per_item": n,
        "progress": (answers / (total * n)) if total else 0.0,
        "annotators": annotators,
        "agreement": agreement,
        "disagreements": disagreements,
    }


def item_unit_labels(project: Project, item_ids=None):
    """Yield (item_id, [unit_labels per answer]) for items with two or more submitted answers."""
    kind = project.kind_spec
    qs = Answer.objects.filter(item__project=project, status=Answer.Status.SUBMITTED, item__answer_count__gte=2)
    if item_ids is not None:
        qs = qs.filter(item_id__in=item_ids)
    current, group = None, []
    for item_id, data in qs.order_by("item_id", "pk").values_list("item_id", "data").iterator(chunk_size=2000):
        if item_id != current and group:
            yield current, group
            group = []
        current = item_id
        group.append(kind.unit_labels(data))
    if group:
        yield current, group


def units_of(answer_labels: list[dict]) -> list[list]:
    keys = sorted({k for labels in answer_labels for k in labels}, key=lambda k: (len(k), k))
    return [[labels.get(k) for labels in answer_labels] for k in keys]


def project_agreement(project: Project) -> dict:
    acc = AlphaAccumulator()
    agreed_units = total_units = items = 0
    for _item_id, answer_labels in item_unit_labels(project):
        items += 1
        for unit in units_of(answer_labels):
            acc.add_unit(unit)
            values = [v for v in unit if v is not None]
            if len(values) >= 2:
                total_units += 1
                agreed_units += len(set(values)) == 1
    return {
        "alpha": acc.alpha(),
        "percent": agreed_units / total_units if total_units else None,
        "items": items,
        "units": total_units,
    }


def item_agreement(item: Item) -> dict:
    groups = dict(item_unit_labels(item.project, [item.pk]))
    labels = groups.get(item.pk, [])
    units = units_of(labels)
    acc = AlphaAccumulator()
    for u in units:
        acc.add_unit(u)
    return {"alpha": acc.alpha(), "percent": percent_agreement(units), "answers": len(labels)}
