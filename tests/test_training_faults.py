"""Training runs survive a killed worker: real `manage.py db_worker --queue-name gpu` processes, `kill -9`.

The worker processes use the test database: their environment names it in DATABASE_NAME_OVERRIDE
(feedback_app/settings.py), and their DATA_DIR (hence MODEL_DIR) is this test's scratch folder.
"""

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from django_tasks_db.models import DBTaskResult

from annotation import answers, training
from annotation.models import ModelVersion, Role, TrainingRun

from .factories import add_member, full_answer, make_items, make_project, wait_until
from .test_training import build_tiny_bert

pytestmark = [pytest.mark.slow, pytest.mark.fault, pytest.mark.django_db(transaction=True)]

SILENCE = timedelta(seconds=1)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert_faults"))


class Workers:
    """db_worker processes on the "gpu" queue, against the test database."""

    def __init__(self, tmp_path: Path, model: Path):
        self.tmp = tmp_path
        self.procs: list[subprocess.Popen] = []
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "feedback_app.settings_test",
            "DATABASE_NAME_OVERRIDE": str(connection.settings_dict["NAME"]),
            "DATA_DIR": str(tmp_path / "data"),
            "DEBUG": "0",
            "LFM_BASE_MODEL": str(model),
            "LFM_DEVICE": "cpu",
            "LFM_MAX_LENGTH": "64",
            "LFM_BATCH_SIZE": "4",
            "LFM_TRAIN_EPOCHS": "2",
            "LFM_LR": "1e-3",
            "LFM_SCORE_ATTRIBUTIONS": "0",
            "TRAINING_HEARTBEAT_S": "0.2",
            "PYTHONUNBUFFERED": "1",
        }

    def start(self) -> subprocess.Popen:
        n = len(self.procs) + 1
        log = open(self.tmp / f"worker{n}.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "db_worker", "--queue-name", "gpu", "--interval", "0.1",
             "--no-startup-delay", "--no-reload", "--worker-id", f"test-worker-{n}"],
            cwd=settings.BASE_DIR, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def kill9(self, proc: subprocess.Popen) -> None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.tmp.glob("worker*.log")))

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)


@pytest.fixture
def workers(tmp_path, tiny_model, settings):
    settings.MODEL_DIR = tmp_path / "data" / "models"
    w = Workers(tmp_path, tiny_model)
    yield w
    w.stop()


def wait_for(what, predicate, timeout, workers, interval=0.05):
    return wait_until(what, predicate, timeout, interval, logs=workers.logs)


def training_in_progress(run_id, attempt):
    run = TrainingRun.objects.get(pk=run_id)
    return (run.status == "running" and run.attempt == attempt and run.heartbeat_at is not None
            and (run.progress or {}).get("step", 0) >= 1 and run)


def reap_until_done(run_id, workers):
    """Once the killed worker's last heartbeat is older than SILENCE, the reaper takes the run."""
    return wait_for("the reaper to take the run", lambda: [d for d in training.reap_stale_runs(SILENCE)
                                                            if d["run"] == run_id], 15, workers, interval=0.2)


@pytest.fixture
def project_with_data():
    """24 trajectories of 5 steps with LLM step feedback, about 8 of them with human final labels (2 held
    out): about 50 optimiser steps, a few seconds to a minute on a shared CPU."""
    project = make_project(retrain_every=0, heldout_percent=30)
    annotator = add_member(project, Role.ANNOTATOR)
    items = make_items(project, count=24, n_steps=5)
    held = [i for i in items if training.is_heldout(project.pk, i.pk, project.heldout_percent)]
    while len(held) < 2:  # evaluation needs held-out human labels
        item = make_items(project, count=1, n_steps=5)[0]
        if training.is_heldout(project.pk, item.pk, project.heldout_percent):
            held.append(item)
    for item in {i.pk: i for i in items[:6] + held[:2]}.values():
        answers.submit(item, annotator, full_answer(item))
    return project


def test_a_killed_worker_run_is_retried_and_finishes_once(workers, project_with_data):
    project = project_with_data
    run, _ = training.queue_run(project, reason="fault test")
    first = workers.start()
    running = wait_for("the first worker to train", lambda: training_in_progress(run.pk, 1), 180, workers)
    assert running.worker_id.startswith("test-worker-1") and running.device == "cpu"
    workers.kill9(first)

    assert reap_until_done(run.pk, workers) == [{"run": run.pk, "action": "requeued"}]
    run.refresh_from_db()
    assert run.status == "queued" and run.attempt == 2 and run.worker_id == ""
    assert not ModelVersion.objects.filter(training_run=run).exists()
    assert not ModelVersion.objects.exists()
    # the retry has its own task on the gpu queue, beside the killed worker's, which stays "running"
    args = [r.args_kwargs["args"] for r in DBTaskResult.objects.filter(task_path="annotation.training.train_run_task",
                                                                         status="READY")]
    assert args == [[run.pk]]

    workers.start()
    done = wait_for("the retried run to finish",
                    lambda: (r := TrainingRun.objects.get(pk=run.pk)).status not in TrainingRun.ACTIVE and r,
                    240, workers, interval=0.2)
    assert done.status == "succeeded", f"{done.error}\n{workers.logs()}"
    assert done.attempt == 2 and done.worker_id.startswith("test-worker-2")
    version = ModelVersion.objects.get()
    assert version.training_run_id == run.pk and done.model_version_id == version.pk
    assert version.metrics["n"] > 0 and version.is_promoted
    from models_ml.registry import ModelRegistry

    registry = ModelRegistry(settings.MODEL_DIR)
    assert registry.verify(version.version)
    assert [r.id for r in registry.list()] == [version.version]  # nothing half-written became a version


def test_a_run_whose_second_worker_dies_too_fails_with_the_reason(workers, project_with_data):
    project = project_with_data
    run, _ = training.queue_run(project, reason="fault test")
    first = workers.start()
    wait_for("the first worker to train", lambda: training_in_progress(run.pk, 1), 180, workers)
    workers.kill9(first)
    assert reap_until_done(run.pk, workers) == [{"run": run.pk, "action": "requeued"}]

    second = workers.start()
    wait_for("the second worker to train", lambda: training_in_progress(run.pk, 2), 180, workers)
    workers.kill9(second)
    assert reap_until_done(run.pk, workers) == [{"run": run.pk, "action": "failed"}]
    run.refresh_from_db()
    assert run.status == "failed" and run.finished_at is not None
    assert run.error == "worker stopped sending heartbeats (attempt 2)"
    assert not ModelVersion.objects.exists()
    assert not DBTaskResult.objects.filter(task_path="annotation.training.train_run_task", status="READY").exists()
