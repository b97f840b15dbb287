"""The model loop: final labels -> a dataset snapshot -> a training run -> a model version -> promotion.

This module is the one bridge between the database and `models_ml` (which knows nothing of Django).
It never imports torch at module level: pages and the answer path import it to count labels and
queue runs; only workers (and tests) build snapshots, train and score.

    labels_changed(project_id)          hook: final labels may have changed (answers.py calls it)
    maybe_queue_training(project)       queue a run when `retrain_every` new final step labels came in
    queue_run(project, user, reason)    queue a run now ("Retrain now"); one queued run per project
    cancel_run(run, user)               a queued run is cancelled at once, a running one at its next step
    run_training(run_id)                claim a queued run, train, evaluate, register, maybe promote
    reap_stale_runs(silence)            re-queue (or fail) running runs whose worker stopped beating
    promote(version, user)              make a version the project's model; re-scores the open items
    score_items(project, item_ids)      predictions (with attributions) of the promoted version
    build_snapshot(project)             the training and held-out examples, their ids and hash

Tasks (queued through annotation.jobs): `train_run_task(run_id)` on the "gpu" queue,
`score_project_task(project_id, version_pk)` and `score_items_task(project_id, ...)` on "default".

Settings (Django settings first, then the environment; all optional):
LFM_BASE_MODEL, LFM_TRAIN_EPOCHS (2 on the CPU, 3 on a GPU), LFM_MAX_LENGTH (128 on the CPU, 256 on a
GPU), LFM_BATCH_SIZE (16), LFM_LR (5e-5), LFM_SEED (0), LFM_PRECISION ("fp32"), LFM_DEVICE (cuda when
available, else cpu),
LFM_SCORE_ATTRIBUTIONS (1), LFM_TRAINER ("models_ml.lfm.train"), TRAINING_HEARTBEAT_S (1),
TRAINING_HEARTBEAT_SILENCE_S (60), TRAINING_MAX_ATTEMPTS (2).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, Iterable

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q, Sum
from django.utils import timezone

from . import live
from .jobs import task
from .models import AuditEvent, Final, Item, Lease, ModelVersion, Prediction, Project, TrainingRun

log = logging.getLogger(__name__)

Status = TrainingRun.Status
#: Most [step, loss] points kept per run for the loss curve (older points are thinned out).
MAX_LOSS_POINTS = 600
#: Items scored per database round trip.
SCORE_ITEMS_PER_BATCH = 16
#: Steps predicted per call while evaluating (a heartbeat between calls).
EVAL_CHUNK = 256
#: The words of a rendered step that start a section (see models_ml.lfm.text.render).
SECTION_MARKERS = ("Task:", "Earlier:", "Before:", "Action:", "After:", "Question:", "Answer:")


class TrainingError(Exception):
    """A run cannot train (no labels, a missing base model, ...): it fails with this message."""


class LostLease(Exception):
    """The run is no longer this worker's (it was reaped and re-queued, or finished elsewhere)."""


class PromotionError(Exception):
    """The version cannot be promoted (its files are missing or no longer match their hash)."""


def setting(name: str, default: Any = None, cast: Callable = str) -> Any:
    """`name` from Django settings, else from the environment, else `default`."""
    value = getattr(settings, name, None)
    if value is None or value == "":
        value = os.environ.get(name, "")
    if value is None or value == "":
        return default
    if cast is bool and isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return cast(value)


def registry():
    from models_ml.registry import ModelRegistry

    return ModelRegistry(settings.MODEL_DIR)


def _project(project) -> Project:
    return project if isinstance(project, Project) else Project.objects.get(pk=project)


# --- live updates of the Models page --------------------------------------------------


def models_group(project_id: int) -> str:
    return f"project-{project_id}-models"


def publish(project_id: int) -> None:
    """Tell the project's open Models pages to refresh (best effort; the page also polls)."""
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(models_group(project_id), {"type": "models.changed"})
    except Exception:  # noqa: BLE001 - polling covers a broken channel layer
        log.warning("could not publish a models update for project %s", project_id, exc_info=True)


def publish_on_commit(project_id: int) -> None:
    transaction.on_commit(lambda: publish(project_id))


# --- the dataset snapshot --------------------------------------------------------------


def is_heldout(project_id: int, item_id: int, percent: int) -> bool:
    """Whether the item's labels are kept for evaluation: a stable hash of (project, item) under `percent`."""
    if percent <= 0:
        return False
    if percent >= 100:
        return True
    digest = hashlib.sha256(f"heldout:{project_id}:{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10_000 < percent * 100


def final_labels(final_data: dict | None) -> dict[int, bool]:
    """{step: label} of the steps whose final label is set (None means nobody stands behind one)."""
    out = {}
    for s in (final_data or {}).get("steps", []):
        if isinstance(s, dict) and isinstance(s.get("step"), int) and s.get("label") is not None:
            out[s["step"]] = bool(s["label"])
    return out


def _final_reasons(final_data: dict | None) -> dict[int, str]:
    out = {}
    for s in (final_data or {}).get("steps", []):
        if isinstance(s, dict) and s.get("reasons"):
            out[s["step"]] = str(s["reasons"][0])
    return out


@dataclass
class Snapshot:
    """What one training run learns from and is measured on."""

    train: list = field(default_factory=list)  # StepExample, human and llm labels
    heldout: list = field(default_factory=list)  # StepExample, human final labels of held-out items
    feedback_ids: list[list[int]] = field(default_factory=list)  # [item_id, step] of every training example
    dataset_hash: str = ""
    human: int = 0
    llm: int = 0
    items: int = 0
    heldout_items: int = 0

    def counts(self) -> dict:
        return {"train_human": self.human, "train_llm": self.llm, "heldout_steps": len(self.heldout),
                "items": self.items, "heldout_items": self.heldout_items}


def _example_record(part: str, e) -> bytes:
    return json.dumps(
        [part, e.key, e.label, e.source, e.weight, e.task, e.before, e.action, e.after, e.context, e.reason],
        ensure_ascii=False, separators=(",", ":"),
    ).encode() + b"\n"


def build_snapshot(project: Project, *, beat: Callable[[], None] | None = None) -> Snapshot:
    """The examples of one training run, in item and step order.

    - Training: the human final step labels of items that are not held out (source "human"), and
      for their other steps the imported LLM feedback (source "llm"; the trainer weighs it by
      `project.llm_label_weight`; left out when that weight is 0).
    - Held out (`is_heldout`): such an item gives nothing to training; its human final labels are
      the evaluation set.
    - `feedback_ids` lists [item_id, step] of every training example; `dataset_hash` is a sha256
      over the training and held-out examples (key, label, source, weight and text), in order.
    """
    from models_ml.lfm import steps_from_trajectory

    snap = Snapshot()
    use_llm = project.llm_label_weight > 0
    digest = hashlib.sha256()
    items = (
        Item.objects.live().filter(project=project).select_related("payload", "final").order_by("pk")
        .only("pk", "payload__data", "final__data").iterator(chunk_size=500)
    )
    for n, item in enumerate(items):
        if beat is not None and n % 200 == 0:
            beat()
        final = getattr(item, "final", None) if hasattr(item, "final") else None
        labels = final_labels(final.data if final else None)
        payload = item.payload.data
        if is_heldout(project.pk, item.pk, project.heldout_percent):
            if labels:
                snap.heldout_items += 1
                for e in steps_from_trajectory(payload, labels=labels, item_key=str(item.pk)):
                    if e.label is not None:
                        snap.heldout.append(e)
                        digest.update(_example_record("heldout", e))
            continue
        if not labels and not use_llm:
            continue
        examples = steps_from_trajectory(
            payload, labels=labels, reasons=_final_reasons(final.data if final else None),
            use_llm_feedback=use_llm, item_key=str(item.pk),
        )
        used = False
        for i, e in enumerate(examples):
            if e.label is None:
                continue
            used = True
            snap.train.append(e)
            snap.feedback_ids.append([item.pk, i])
            digest.update(_example_record("train", e))
            if e.source == "human":
                snap.human += 1
            else:
                snap.llm += 1
        snap.items += used
    snap.dataset_hash = digest.hexdigest()
    return snap


# --- when to train ---------------------------------------------------------------------


def human_label_count(project) -> int:
    """How many steps of the project have a human final label."""
    n = 0
    finals = Final.objects.filter(item__project=project).values_list("data", flat=True)
    for data in finals.iterator(chunk_size=1000):
        n += len(final_labels(data))
    return n


def last_labels_seen(project) -> int:
    latest = TrainingRun.objects.filter(project=project).order_by("-created_at", "-pk")
    return latest.values_list("labels_seen", flat=True).first() or 0


def labels_changed(project_id: int) -> None:
    """Hook for the answer path: after the current transaction commits, see whether a run is due."""
    transaction.on_commit(lambda: _check_trigger(project_id))


def _check_trigger(project_id: int) -> None:
    try:
        maybe_queue_training(project_id)
    except Exception:  # noqa: BLE001 - a failed check never fails the answer that triggered it
        log.exception("could not check whether project %s needs a training run", project_id)


def maybe_queue_training(project) -> TrainingRun | None:
    """Queue a run when `retrain_every` > 0, no run is queued or running, and the project has at
    least `retrain_every` more final step labels than the latest run saw. Returns the new run."""
    project = _project(project)
    if project.retrain_every <= 0:
        return None
    if TrainingRun.objects.filter(project=project, status__in=TrainingRun.ACTIVE).exists():
        return None
    seen = last_labels_seen(project)
    # Cheap bound first (every step of every item with a final label), the exact count only near the threshold.
    bound = Item.objects.filter(project=project, state=Item.State.FINAL).aggregate(n=Sum("step_count"))["n"] or 0
    if bound - seen < project.retrain_every:
        return None
    count = human_label_count(project)
    if count - seen < project.retrain_every:
        return None
    run, created = queue_run(project, reason=f"{count - seen} new final step labels", labels_seen=count,
                             only_if_idle=True)
    return run if created else None


def queue_run(project: Project, user=None, *, reason: str = "", labels_seen: int | None = None,
              only_if_idle: bool = False) -> tuple[TrainingRun | None, bool]:
    """Queue a training run; (run, True), or (the run already queued, False) since a project has at
    most one queued run (a unique constraint in the database, so concurrent callers cannot both win)."""
    if labels_seen is None:
        labels_seen = human_label_count(project)
    actor = user if getattr(user, "is_authenticated", False) else None
    try:
        with transaction.atomic():
            if only_if_idle and TrainingRun.objects.filter(project=project, status__in=TrainingRun.ACTIVE).exists():
                return None, False
            run = TrainingRun.objects.create(
                project=project, status=Status.QUEUED, reason=reason[:200], requested_by=actor,
                labels_seen=labels_seen, max_attempts=setting("TRAINING_MAX_ATTEMPTS", 2, int),
            )
            AuditEvent.record(actor=actor, verb="training.queued", obj=run, project=project,
                              after={"reason": run.reason, "labels_seen": labels_seen})
            run_id = run.pk
            transaction.on_commit(lambda: enqueue_run(run_id))
            publish_on_commit(project.pk)
    except IntegrityError:
        return TrainingRun.objects.filter(project=project, status=Status.QUEUED).first(), False
    return run, True


def enqueue_run(run_id: int) -> None:
    """Put the run's task on the "gpu" queue; a run that cannot be queued fails (it would wait forever)."""
    try:
        train_run_task.enqueue(run_id)
    except Exception as exc:  # noqa: BLE001
        log.exception("could not queue training run %s", run_id)
        TrainingRun.objects.filter(pk=run_id, status=Status.QUEUED).update(
            status=Status.FAILED, error=f"the run could not be queued: {exc}", finished_at=timezone.now())


def cancel_run(run: TrainingRun, user=None) -> str:
    """Cancel a run: a queued one at once, a running one at its next training step. Returns what happened
    ("cancelled", "cancelling", or "finished" when it was already over)."""
    now = timezone.now()
    with transaction.atomic():
        if TrainingRun.objects.filter(pk=run.pk, status=Status.QUEUED).update(
                status=Status.CANCELLED, cancel_requested=True, finished_at=now, error="cancelled before it started"):
            outcome = "cancelled"
        elif TrainingRun.objects.filter(pk=run.pk, status=Status.RUNNING).update(cancel_requested=True):
            outcome = "cancelling"
        else:
            return "finished"
        AuditEvent.record(actor=user, verb="training.cancelled", obj=run, project=run.project,
                          after={"outcome": outcome})
        publish_on_commit(run.project_id)
    return outcome


# --- the worker side: heartbeat, progress, cancellation -----------------------------------


class RunLease:
    """A claimed run, from its worker's side: beats at most every TRAINING_HEARTBEAT_S seconds (writing
    progress and the loss curve with the beat), raises Cancelled when a manager asked for it and
    LostLease when the run is no longer this worker's."""

    def __init__(self, run: TrainingRun, worker_id: str):
        self.run_id = run.pk
        self.project_id = run.project_id
        self.worker_id = worker_id
        self.interval = setting("TRAINING_HEARTBEAT_S", 1.0, float)
        self.progress: dict = {}
        self.losses: list[list] = []
        self.stride = 1
        self._last = time.monotonic()

    def _mine(self):
        return TrainingRun.objects.filter(pk=self.run_id, status=Status.RUNNING, worker_id=self.worker_id)

    def beat(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        updated = self._mine().filter(cancel_requested=False).update(
            heartbeat_at=timezone.now(), progress=self.progress, losses=self.losses)
        if not updated:
            if self._mine().filter(cancel_requested=True).exists():
                from models_ml.lfm import Cancelled

                raise Cancelled("cancelled by a manager")
            raise LostLease(f"run {self.run_id} is no longer held by {self.worker_id}")
        publish(self.project_id)

    def phase(self, name: str, **extra) -> None:
        self.progress = {**self.progress, "phase": name, **extra}
        self.beat(force=True)

    def on_step(self, epoch: int, step: int, total: int, loss: float) -> None:
        """models_ml's progress callback: (epoch, step, total_steps, loss) after every optimiser step."""
        loss = round(float(loss), 5)
        self.progress = {**self.progress, "phase": "training", "epoch": epoch + 1, "step": step,
                         "total_steps": total, "loss": loss}
        if step % self.stride == 0 or step == total:
            self.losses.append([step, loss])
            if len(self.losses) > MAX_LOSS_POINTS:
                self.losses = self.losses[::2]
                self.stride *= 2
        self.beat(force=step == total)

    def finish(self, status: str, *, error: str = "", **fields) -> bool:
        return bool(self._mine().update(status=status, error=error, finished_at=timezone.now(),
                                         heartbeat_at=timezone.now(), progress=self.progress,
                                         losses=self.losses, **fields))


def training_config(project: Project, device: str):
    """The seeded LFMConfig of a run (settings above; the project's base model wins over LFM_BASE_MODEL)."""
    from models_ml.lfm import LFMConfig

    on_gpu = str(device).startswith("cuda")
    base = project.base_model.strip() or setting("LFM_BASE_MODEL", "") or None
    return LFMConfig(
        base_model=base,
        max_length=setting("LFM_MAX_LENGTH", 256 if on_gpu else 128, int),
        epochs=setting("LFM_TRAIN_EPOCHS", 3 if on_gpu else 2, int),
        batch_size=setting("LFM_BATCH_SIZE", 16, int),
        lr=setting("LFM_LR", 5e-5, float),
        seed=setting("LFM_SEED", 0, int),
        precision=setting("LFM_PRECISION", "fp32"),
        llm_label_weight=float(project.llm_label_weight),
    )


def _device() -> str:
    chosen = setting("LFM_DEVICE", "")
    if chosen:
        return chosen
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _predict(model, examples: list, beat: Callable[[], None] | None = None) -> list[float]:
    from models_ml.lfm import predict

    out: list[float] = []
    for b in range(0, len(examples), EVAL_CHUNK):
        out += predict(model, model.tokenizer, examples[b : b + EVAL_CHUNK])
        if beat is not None:
            beat()
    return out


def _metrics(model, heldout: list, beat=None) -> dict:
    from models_ml.lfm import evaluate

    return evaluate([bool(e.label) for e in heldout], _predict(model, heldout, beat) if heldout else [])


def load_version(version: ModelVersion, device=None):
    """The version's model (with .tokenizer) from the registry; its files are re-hashed first."""
    model, tokenizer, _ = registry().load(version.version, device=device)
    model.tokenizer = tokenizer
    return model


def promoted_version(project) -> ModelVersion | None:
    return ModelVersion.objects.filter(project=project, is_promoted=True).defer("feedback_ids").first()


def run_training(run_id: int, *, device: str | None = None, worker_id: str | None = None) -> TrainingRun | None:
    """Claim the queued run `run_id` and carry it to the end. A run that is not queued (a duplicate
    task, a cancelled run) is left alone and None is returned."""
    me = (worker_id or f"{socket.gethostname()}:{os.getpid()}")[:200]
    dev = device or _device()
    now = timezone.now()
    claimed = TrainingRun.objects.filter(pk=run_id, status=Status.QUEUED).update(
        status=Status.RUNNING, worker_id=me, device=dev, started_at=now, heartbeat_at=now,
        progress={"phase": "starting"}, losses=[], error="", finished_at=None)
    if not claimed:
        log.info("training run %s is not queued; nothing to do", run_id)
        return None
    run = TrainingRun.objects.select_related("project").get(pk=run_id)
    lease = RunLease(run, me)
    publish(run.project_id)
    from models_ml.lfm import Cancelled

    try:
        _train_and_register(run, dev, lease)
    except Cancelled as exc:
        lease.finish(Status.CANCELLED, error=str(exc) or "cancelled")
    except LostLease as exc:
        log.warning("%s", exc)
    except Exception as exc:  # noqa: BLE001 - any failure ends the run with its reason
        log.exception("training run %s failed", run_id)
        if isinstance(exc, TrainingError):
            message = str(exc)
        else:
            message = f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()}"
        try:
            lease.finish(Status.FAILED, error=message)
        except Exception:  # noqa: BLE001 - the database itself may be what failed; the reaper ends the run
            log.exception("could not record the failure of training run %s", run_id)
    publish(run.project_id)
    return TrainingRun.objects.get(pk=run_id)


def trainer() -> Callable:
    """The training function: LFM_TRAINER (a dotted path), else models_ml.lfm.train. The plug-in point for
    multi-GPU training: same signature, (config, train_examples, eval_examples, *, device, progress,
    should_stop) -> model with .tokenizer and .lfm_config (see docs/models.md)."""
    from django.utils.module_loading import import_string

    return import_string(setting("LFM_TRAINER", "models_ml.lfm.train"))


def _train_and_register(run: TrainingRun, device: str, lease: RunLease) -> None:
    project = run.project
    lease.phase("snapshot")
    snap = build_snapshot(project, beat=lease.beat)
    if not snap.train:
        raise TrainingError(f"no labelled steps to train on ({len(snap.heldout)} held-out steps)")
    config = training_config(project, device)
    lease.phase("loading", epochs=config.epochs, examples=len(snap.train))
    train = trainer()
    try:
        model = train(config, snap.train, None, device=device, progress=lease.on_step)
    except FileNotFoundError as exc:
        raise TrainingError(f"base model: {exc}") from exc
    lease.phase("evaluating")
    metrics = {**_metrics(model, snap.heldout, lease.beat), **snap.counts()}
    baseline = promoted_version(project)
    baseline_metrics: dict = {}
    if baseline is not None:
        try:
            baseline_metrics = _metrics(load_version(baseline, device), snap.heldout, lease.beat)
        except Exception as exc:  # noqa: BLE001 - a missing old version must not stop the new one
            baseline_metrics = {"error": f"{type(exc).__name__}: {exc}"}
        baseline_metrics.update(version=baseline.version, version_id=baseline.pk)
    lease.phase("saving")
    hyper = model.lfm_config.to_dict()
    record = registry().save(model, model.tokenizer, {
        "dataset_sha256": snap.dataset_hash, "feedback_ids": snap.feedback_ids, "metrics": metrics,
        "baseline_metrics": baseline_metrics, "project_id": project.pk, "training_run": run.pk,
    })
    verify_version(record.id)  # what was written reads back whole before any row refers to it
    lease.beat(force=True)  # still ours, not cancelled: only now may the version row appear
    with transaction.atomic():
        held = lease._mine().select_for_update().filter(cancel_requested=False).first()
        if held is None:
            lease.beat(force=True)  # raises Cancelled or LostLease
            raise LostLease(f"run {run.pk} changed hands while saving")
        version, created = ModelVersion.objects.get_or_create(
            project=project, version=record.id,
            defaults={
                "path": str(record.path), "base_model": hyper.get("base_model") or "", "hyperparameters": hyper,
                "seed": config.seed, "dataset_hash": snap.dataset_hash, "feedback_ids": snap.feedback_ids,
                "metrics": metrics, "baseline_metrics": baseline_metrics, "training_run": run,
            },
        )
        # The run ends with its promotion decision: a succeeded run's version is already promoted or not.
        project.refresh_from_db(fields=["auto_promote", "promote_margin"])
        if created and project.auto_promote and should_promote(project, metrics, baseline_metrics, baseline):
            _promote_verified(version, None, expect_current=baseline.pk if baseline else None,
                              note=f"automatic: F1 {_fmt(metrics.get('f1'))} vs {_fmt(baseline_metrics.get('f1'))}")
        lease.progress = {**lease.progress, "phase": "done"}
        lease.finish(Status.SUCCEEDED, model_version=version,
                     error="" if created else f"same weights as the existing version {version.version}")


def _fmt(x) -> str:
    return "—" if x is None else f"{x:.3f}"


def should_promote(project: Project, metrics: dict, baseline_metrics: dict, baseline: ModelVersion | None) -> bool:
    """The auto-promotion rule: no promoted version yet, or the new held-out F1 is at least the promoted
    version's F1 on the same held-out steps plus `promote_margin`. Without an F1 on both sides (no
    held-out labels, an unreadable old version) a promoted version stays."""
    if baseline is None:
        return True
    new, old = metrics.get("f1"), baseline_metrics.get("f1")
    if new is None or old is None:
        return False
    return new >= old + project.promote_margin - 1e-12


@task(queue_name="gpu", takes_context=True)
def train_run_task(context, run_id: int) -> dict:
    """Run one training run (see run_training); a duplicate task finds the run taken and does nothing."""
    ids = getattr(context.task_result, "worker_ids", None) or []
    worker = f"{ids[-1]}:{os.getpid()}" if ids else None
    run = run_training(run_id, worker_id=worker)
    return {"run": run_id, "status": run.status if run else "skipped"}


# --- lost workers ------------------------------------------------------------------------


def reap_stale_runs(silence: timedelta | None = None, *, project=None) -> list[dict]:
    """Runs whose worker stopped beating for `silence` (default TRAINING_HEARTBEAT_SILENCE_S, 60 s):
    back to the queue as the next attempt while attempts remain (unless another run of the project is
    queued already), else failed. A run whose cancellation was asked for is cancelled. Returns
    [{run, action}] with action "requeued", "failed" or "cancelled"."""
    if silence is None:
        silence = timedelta(seconds=setting("TRAINING_HEARTBEAT_SILENCE_S", 60, float))
    cutoff = timezone.now() - silence
    stale = TrainingRun.objects.filter(status=Status.RUNNING).filter(
        Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, started_at__lt=cutoff))
    if project is not None:
        stale = stale.filter(project=project)
    done = []
    for run in stale.only("pk", "project_id", "attempt", "max_attempts", "cancel_requested", "worker_id"):
        action = _reap(run, cutoff)
        if action:
            done.append({"run": run.pk, "action": action})
            log.warning("training run %s: worker %s stopped sending heartbeats; %s", run.pk, run.worker_id, action)
            publish(run.project_id)
    if done:
        try:
            registry().clean_tmp(older_than_s=3600)
        except OSError:
            log.warning("could not clean the model registry's unfinished writes", exc_info=True)
    return done


def _reap(run: TrainingRun, cutoff) -> str | None:
    still = TrainingRun.objects.filter(pk=run.pk, status=Status.RUNNING).filter(
        Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True))
    why = f"worker stopped sending heartbeats (attempt {run.attempt})"
    now = timezone.now()
    if run.cancel_requested:
        return "cancelled" if still.update(status=Status.CANCELLED, error=why, finished_at=now) else None
    if run.attempt < run.max_attempts:
        try:
            with transaction.atomic():
                if not still.update(status=Status.QUEUED, attempt=F("attempt") + 1, worker_id="", device="",
                                    heartbeat_at=None, progress={}, error=f"attempt {run.attempt}: {why}"):
                    return None
                run_id = run.pk
                transaction.on_commit(lambda: enqueue_run(run_id))
            return "requeued"
        except IntegrityError:
            why += "; another run of the project is queued"
    return "failed" if still.update(status=Status.FAILED, error=why, finished_at=now) else None


# --- promotion and scoring -----------------------------------------------------------------


_UNSET = object()


def promote(version: ModelVersion, user=None, *, expect_current=_UNSET, note: str = "") -> bool:
    """Make `version` the project's model in one transaction (the old one is unset, the new one set),
    audited; after commit the open items are re-scored. Restoring an earlier version is promoting it.
    The version's files must verify against their hash. With `expect_current` (a version pk or None),
    nothing happens unless that is still the promoted version. Returns whether anything changed."""
    verify_version(version.version)
    return _promote_verified(version, user, expect_current=expect_current, note=note)


def verify_version(version_id: str) -> None:
    """Raise PromotionError unless the registry holds `version_id` and its files still match their hash."""
    from models_ml.registry import RegistryError

    try:
        intact = registry().verify(version_id)
    except RegistryError as exc:
        raise PromotionError(f"version {version_id} is not in the model registry ({exc})") from None
    if not intact:
        raise PromotionError(f"the files of version {version_id} no longer match their hash")


def _promote_verified(version: ModelVersion, user=None, *, expect_current=_UNSET, note: str = "") -> bool:
    """promote() once the files are verified: the one transaction."""
    project_id = version.project_id
    with transaction.atomic():
        Project.objects.select_for_update().filter(pk=project_id).first()  # one promotion at a time
        current = ModelVersion.objects.filter(project_id=project_id, is_promoted=True).first()
        if expect_current is not _UNSET and (current.pk if current else None) != expect_current:
            return False
        if current is not None and current.pk == version.pk:
            return False
        if current is not None:
            ModelVersion.objects.filter(pk=current.pk).update(is_promoted=False)
        now = timezone.now()
        ModelVersion.objects.filter(pk=version.pk).update(is_promoted=True, promoted_at=now)
        version.is_promoted, version.promoted_at = True, now
        AuditEvent.record(
            actor=user, verb="model.promoted", obj=version, project=version.project,
            before={"version": current.version} if current else None,
            after={"version": version.version, "f1": version.metrics.get("f1"), "note": note or "by hand"},
        )
        pk = version.pk
        transaction.on_commit(lambda: _enqueue_scoring(project_id, pk))
        publish_on_commit(project_id)
    return True


def _enqueue_scoring(project_id: int, version_pk: int) -> None:
    try:
        score_project_task.enqueue(project_id, version_pk)
    except Exception:  # noqa: BLE001 - the next promotion or import scores again
        log.exception("could not queue scoring of project %s", project_id)


@task(queue_name="default")
def score_project_task(project_id: int, version_pk: int) -> dict:
    """Score every open item of the project with `version_pk`, if it is still the promoted version."""
    version = ModelVersion.objects.filter(pk=version_pk, project_id=project_id, is_promoted=True).first()
    if version is None:
        return {"project": project_id, "scored": 0, "skipped": "no longer the promoted version"}
    return {"project": project_id, "scored": score_items(version.project, None, version=version)}


@task(queue_name="default")
def score_items_task(project_id: int, item_ids: list[int] | None = None, import_job_id: int | None = None) -> dict:
    """Score the given items (or those of an import job) with the promoted version."""
    project = Project.objects.get(pk=project_id)
    if import_job_id is not None:
        item_ids = list(Item.objects.filter(import_job_id=import_job_id).values_list("pk", flat=True))
    return {"project": project_id, "scored": score_items(project, item_ids)}


def enqueue_score_items(project_id: int, *, item_ids: Iterable[int] | None = None,
                        import_job_id: int | None = None) -> bool:
    """Queue scoring of new items when the project has a promoted version (call after commit).
    Returns whether a task was queued."""
    if not ModelVersion.objects.filter(project_id=project_id, is_promoted=True).exists():
        return False
    try:
        score_items_task.enqueue(project_id, list(item_ids) if item_ids is not None else None, import_job_id)
    except Exception:  # noqa: BLE001 - the items keep their imported predictions; the next promotion scores them
        log.exception("could not queue scoring of new items of project %s", project_id)
        return False
    return True


_model_cache: dict[str, Any] = {}
_model_lock = threading.Lock()


def _scoring_model(version: ModelVersion):
    """The version's model, kept in memory for the next call (one version at a time)."""
    key = f"{settings.MODEL_DIR}:{version.version}"
    with _model_lock:
        model = _model_cache.get(key)
        if model is None:
            _model_cache.clear()
            model = _model_cache[key] = load_version(version, _device())
        return model


STEP_SECTIONS = ("Before:", "Action:", "After:")


def _explanation(attributions) -> str:
    """The three words of the step itself (before, action, after) that weighed most, with their weights."""
    words, inside = [], False
    for w, x in attributions:
        if w in SECTION_MARKERS:
            inside = w in STEP_SECTIONS
        elif inside:
            words.append((w, x))
    top = sorted(words, key=lambda wx: -abs(wx[1]))[:3]
    return ", ".join(f"{w} ({x:+.2f})" for w, x in top)


def _shows_prediction(payload: dict) -> bool:
    """Whether a reviewer sees the model's label on some step (a step without LLM feedback)."""
    return any(s.get("feedback") is None for s in payload["steps"])


def score_items(project: Project, item_ids: Iterable[int] | None = None, *, version: ModelVersion | None = None) -> int:
    """Write a new Prediction (probability, explanation and grad x input attributions per step) for each
    open item (of `item_ids`, else of the project) with `version` (default: the promoted one), and set
    Item.priority to the prediction's uncertainty. Items someone holds right now whose steps show the
    model's label keep their prediction (the verdicts on that page refer to it). Returns how many items
    were scored; 0 when the project has no promoted version."""
    from models_ml.lfm import explain, steps_from_trajectory

    version = version or promoted_version(project)
    if version is None:
        return 0
    model = _scoring_model(version)
    kind = project.kind_spec
    with_attr = setting("LFM_SCORE_ATTRIBUTIONS", True, bool)
    qs = Item.objects.filter(project=project, state=Item.State.OPEN)
    if item_ids is not None:
        qs = qs.filter(pk__in=list(item_ids))
    ids = list(qs.order_by("pk").values_list("pk", flat=True))
    scored = 0
    for b in range(0, len(ids), SCORE_ITEMS_PER_BATCH):
        chunk = ids[b : b + SCORE_ITEMS_PER_BATCH]
        held = set(Lease.objects.filter(item_id__in=chunk, expires_at__gt=timezone.now())
                   .values_list("item_id", flat=True))
        batch = []
        for item in Item.objects.filter(pk__in=chunk, state=Item.State.OPEN).select_related("payload").order_by("pk"):
            payload = item.payload.data
            if item.pk in held and _shows_prediction(payload):
                continue
            batch.append((item, steps_from_trajectory(payload, item_key=str(item.pk))))
        examples = [e for _, exs in batch for e in exs]
        probs = iter(_predict(model, examples))
        preds, items = [], []
        for item, exs in batch:
            steps = []
            for i, e in enumerate(exs):
                p = round(float(next(probs)), 6)
                step = {"step": i, "probability": p, "explanation": ""}
                if with_attr:
                    attr = [[w, round(float(x), 3)] for w, x in explain(model, model.tokenizer, e, "grad_x_input")]
                    step["attributions"] = attr
                    step["explanation"] = _explanation(attr)
                steps.append(step)
            data = kind.prediction_schema.model_validate(
                {"model_version": version.version, "steps": steps}).model_dump(mode="json", exclude_none=True)
            uncertainty = kind.uncertainty(data)
            preds.append(Prediction(item=item, model_version=version.version, data=data, uncertainty=uncertainty))
            item.priority = uncertainty
            items.append(item)
        with transaction.atomic():
            Prediction.objects.bulk_create(preds)
            Item.objects.bulk_update(items, ["priority"])
        scored += len(items)
    if scored:
        live.project_changed(project.pk, "predictions")
    return scored
