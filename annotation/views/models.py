"""Pages: the model loop (training runs, model versions, promotion).

models-page      GET   runs in progress (progress bar, loss curve), versions with held-out metrics
models-fragment  GET   the live part of the page (polled every 2 s while a run is active; also pushed
                       over ws/projects/<id>/models/live/)
models-retrain   POST  queue a training run now
models-cancel    POST  cancel a queued or running run
models-promote   POST  promote a version (or restore an earlier one)

Charts are inline SVG drawn from numbers computed here; nothing comes from a CDN.
"""

import logging

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect
from django.urls import path
from django.views.decorators.http import require_GET, require_POST

from .. import training
from ..models import ModelVersion, TrainingRun
from ..permissions import MANAGE, project_view
from .projects import page

log = logging.getLogger(__name__)

LOSS_W, LOSS_H, PAD = 560, 150, 6
CHART_W, CHART_H = 560, 150
MAX_VERSIONS = 50
MAX_RUNS = 10


def loss_chart(losses: list) -> dict | None:
    """Polyline points for [[step, loss], ...], scaled into a LOSS_W x LOSS_H box (y grows downwards)."""
    pts = [(float(s), float(v)) for s, v in losses or [] if v is not None]
    if not pts:
        return None
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(0.0, min(ys)), max(ys)
    dx, dy = (x1 - x0) or 1.0, (y1 - y0) or 1.0

    def sx(x):
        return PAD + (x - x0) / dx * (LOSS_W - 2 * PAD)

    def sy(y):
        return LOSS_H - PAD - (y - y0) / dy * (LOSS_H - 2 * PAD)

    return {
        "points": " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts),
        "width": LOSS_W, "height": LOSS_H,
        "y_max": f"{y1:.3g}", "y_min": f"{y0:.3g}", "x_max": int(x1), "last": f"{ys[-1]:.4f}",
        "n": len(pts),
    }


def metrics_chart(versions: list[ModelVersion]) -> dict | None:
    """F1 and AUROC per version, oldest first, on a 0..1 axis."""
    if not versions:
        return None
    n = len(versions)
    step = (CHART_W - 2 * PAD - 40) / max(1, n - 1)

    def sx(i):
        return 40 + PAD + (i * step if n > 1 else (CHART_W - 2 * PAD - 40) / 2)

    def sy(v):
        return CHART_H - PAD - v * (CHART_H - 2 * PAD)

    series = {"f1": [], "auroc": []}
    dots = []
    for i, v in enumerate(versions):
        for key in series:
            value = (v.metrics or {}).get(key)
            if value is not None:
                series[key].append(f"{sx(i):.1f},{sy(value):.1f}")
                dots.append({"key": key, "x": f"{sx(i):.1f}", "y": f"{sy(value):.1f}",
                             "title": f"{v.version[:8]} {key.upper()} {value:.3f}"})
    return {"f1": " ".join(series["f1"]), "auroc": " ".join(series["auroc"]), "dots": dots,
            "width": CHART_W, "height": CHART_H, "y1": f"{sy(1.0):.1f}", "y05": f"{sy(0.5):.1f}",
            "y0": f"{sy(0.0):.1f}"}


def _metric_row(v: ModelVersion) -> dict:
    m, b = v.metrics or {}, v.baseline_metrics or {}

    def cell(d, key):
        x = d.get(key)
        return "—" if x is None else f"{x:.3f}"

    better = None
    if m.get("f1") is not None and b.get("f1") is not None:
        better = m["f1"] >= b["f1"]
    return {
        "v": v,
        "short": v.version[:12],
        "accuracy": cell(m, "accuracy"), "f1": cell(m, "f1"), "auroc": cell(m, "auroc"), "ece": cell(m, "ece"),
        "b_accuracy": cell(b, "accuracy"), "b_f1": cell(b, "f1"), "b_auroc": cell(b, "auroc"), "b_ece": cell(b, "ece"),
        "baseline": b.get("version", "")[:12] if b else "",
        "baseline_error": b.get("error", "") if b else "",
        "n": m.get("n"), "train_human": m.get("train_human"), "train_llm": m.get("train_llm"),
        "better": better,
    }


def _run_row(run: TrainingRun) -> dict:
    p = run.progress or {}
    total, step = p.get("total_steps") or 0, p.get("step") or 0
    percent = int(100 * step / total) if total else (100 if run.status == TrainingRun.Status.SUCCEEDED else 0)
    return {"run": run, "p": p, "percent": percent, "loss": loss_chart(run.losses),
            "error_head": (run.error or "").strip().splitlines()[0][:300] if run.error else ""}


def models_context(project) -> dict:
    """Everything the live part of the Models page shows."""
    active = list(TrainingRun.objects.filter(project=project, status__in=TrainingRun.ACTIVE)
                  .select_related("requested_by").order_by("-status", "created_at"))  # running before queued
    runs = list(TrainingRun.objects.filter(project=project).select_related("requested_by", "model_version")
                .order_by("-created_at", "-pk")[:MAX_RUNS])
    versions = list(ModelVersion.objects.filter(project=project).defer("feedback_ids")
                    .order_by("-created_at", "-pk")[:MAX_VERSIONS])
    last_finished = next((r for r in runs if r.status not in TrainingRun.ACTIVE and r.losses), None)
    return {
        "active_runs": [_run_row(r) for r in active],
        "runs": [_run_row(r) for r in runs],
        "versions": [_metric_row(v) for v in versions],
        "chart": metrics_chart(list(reversed(versions))),
        "last_loss": loss_chart(last_finished.losses) if last_finished and not active else None,
        "last_finished": last_finished,
    }


@require_GET
@project_view(MANAGE)
def models_page(request, project):
    try:
        training.reap_stale_runs(project=project)
    except Exception:  # noqa: BLE001 - the page shows what there is even if the reaper fails
        log.exception("reaping stale runs of project %s failed", project.pk)
    labels = training.human_label_count(project)
    seen = training.last_labels_seen(project)
    return page(request, "annotation/models.html", project, labels=labels, new_labels=max(0, labels - seen),
                **models_context(project))


@require_GET
@project_view(MANAGE)
def models_fragment(request, project):
    return page(request, "annotation/_models_live.html", project, **models_context(project))


@require_POST
@project_view(MANAGE)
def models_retrain(request, project):
    run, created = training.queue_run(project, request.user, reason=f"requested by {request.user.get_username()}")
    if created:
        messages.success(request, f"Training run {run.pk} is queued.")
    elif run is not None:
        messages.info(request, f"Run {run.pk} is already queued; it will train on every label there is when it starts.")
    return redirect("models-page", project.pk)


@require_POST
@project_view(MANAGE)
def models_cancel(request, project, run_id):
    run = get_object_or_404(TrainingRun, pk=run_id, project=project)
    outcome = training.cancel_run(run, request.user)
    text = {"cancelled": f"Run {run.pk} is cancelled.",
            "cancelling": f"Run {run.pk} stops at its next training step.",
            "finished": f"Run {run.pk} had already finished."}[outcome]
    messages.info(request, text)
    return redirect("models-page", project.pk)


@require_POST
@project_view(MANAGE)
def models_promote(request, project, version_id):
    version = get_object_or_404(ModelVersion, pk=version_id, project=project)
    try:
        changed = training.promote(version, request.user)
    except training.PromotionError as exc:
        messages.error(request, str(exc))
    else:
        if changed:
            messages.success(request, f"Version {version.version[:12]} is now the project's model; open items are "
                                      "being re-scored.")
        else:
            messages.info(request, f"Version {version.version[:12]} already is the project's model.")
    return redirect("models-page", project.pk)


urlpatterns = [
    path("projects/<int:project_id>/models/", models_page, name="models-page"),
    path("projects/<int:project_id>/models/live/", models_fragment, name="models-fragment"),
    path("projects/<int:project_id>/models/retrain/", models_retrain, name="models-retrain"),
    path("projects/<int:project_id>/models/runs/<int:run_id>/cancel/", models_cancel, name="models-cancel"),
    path("projects/<int:project_id>/models/versions/<int:version_id>/promote/", models_promote,
         name="models-promote"),
]
