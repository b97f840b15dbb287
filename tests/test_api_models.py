"""The model loop over the REST API: training runs, model versions, promotion, and the scripted reviewer."""

import importlib.util
import json
import random
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from django_tasks_db.models import DBTaskResult
from rest_framework.test import APIClient

from annotation import training
from annotation.models import AuditEvent, Final, Item, ModelVersion, Role, TrainingRun

from .factories import PASSWORD, add_member, make_items, make_project, make_user, trajectory
from .test_training import SCORE_TASK, TRAIN_TASK, labelled, lfm, tiny_bert, train_now  # noqa: F401 (fixtures)

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "play_reviewer.py"


def token_client(user) -> APIClient:
    """A client that authenticates with the user's API token, as scripts do."""
    client = APIClient()
    r = client.post("/api/auth/token/", {"username": user.username, "password": PASSWORD}, format="json")
    assert r.status_code == 200, r.content
    client.credentials(HTTP_AUTHORIZATION=f"Token {r.json()['token']}")
    return client


def url(project, rest=""):
    return f"/api/projects/{project.pk}/{rest}"


def tasks(path):
    return DBTaskResult.objects.filter(task_path=path)


def load_script():
    spec = importlib.util.spec_from_file_location("play_reviewer", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- permissions ------------------------------------------------------------------------


def model_urls(project, run, version):
    return [
        ("get", url(project, "runs/")),
        ("post", url(project, "runs/")),
        ("get", url(project, f"runs/{run.pk}/")),
        ("post", url(project, f"runs/{run.pk}/cancel/")),
        ("get", url(project, "versions/")),
        ("get", url(project, f"versions/{version.pk}/")),
        ("post", url(project, f"versions/{version.pk}/promote/")),
    ]


@pytest.mark.parametrize("role, expected", [("anonymous", 401), ("outsider", 404), (Role.VIEWER, 403),
                                            (Role.ANNOTATOR, 403), (Role.REVIEWER, 403)])
def test_the_model_endpoints_need_manage(project, role, expected):
    run = TrainingRun.objects.create(project=project, status=TrainingRun.Status.QUEUED)
    version = ModelVersion.objects.create(project=project, version="v1")
    if role == "anonymous":
        client = APIClient()
    elif role == "outsider":
        client = token_client(make_user("outsider"))
    else:
        client = token_client(add_member(project, role))
    for method, path in model_urls(project, run, version):
        r = getattr(client, method)(path, {}, format="json") if method == "post" else client.get(path)
        assert r.status_code == expected, (method, path, r.content)
        assert "detail" in r.json()
    run.refresh_from_db()
    version.refresh_from_db()
    assert run.status == "queued" and not run.cancel_requested and not version.is_promoted
    assert TrainingRun.objects.count() == 1


def test_a_site_admin_manages_models_without_membership(project):
    admin = make_user("root", is_superuser=True, is_staff=True)
    assert token_client(admin).get(url(project, "runs/")).status_code == 200
    assert token_client(admin).get(url(project, "versions/")).status_code == 200


# --- training runs --------------------------------------------------------------------------


def test_runs_list_newest_first_without_the_loss_curve(project, manager):
    old = TrainingRun.objects.create(project=project, status="succeeded", reason="first",
                                     created_at=timezone.now() - timedelta(hours=1),
                                     finished_at=timezone.now(), losses=[[1, 0.7], [2, 0.5]])
    new = TrainingRun.objects.create(
        project=project, status="running", reason="second", worker_id="gpu-box:42", device="cuda",
        started_at=timezone.now(), heartbeat_at=timezone.now(), labels_seen=120, requested_by=manager,
        progress={"phase": "training", "epoch": 1, "epochs": 3, "step": 3, "total_steps": 12, "loss": 0.61},
        losses=[[1, 0.7], [2, 0.65], [3, 0.61]])
    TrainingRun.objects.create(project=make_project("Other"), status="queued")
    client = token_client(manager)
    body = client.get(url(project, "runs/")).json()
    assert body["count"] == 2 and body["next"] is None
    assert [r["id"] for r in body["results"]] == [new.pk, old.pk]
    row = body["results"][0]
    assert "losses" not in row
    assert row["status"] == "running" and row["reason"] == "second" and row["attempt"] == 1
    assert row["device"] == "cuda" and row["worker_id"] == "gpu-box:42" and row["labels_seen"] == 120
    assert row["progress"]["step"] == 3 and row["progress"]["total_steps"] == 12
    assert row["requested_by"] == "manager" and row["cancel_requested"] is False
    assert row["model_version"] is None and row["error"] == ""
    for key in ("created_at", "started_at", "finished_at", "heartbeat_at"):
        assert key in row
    # one page at a time, and a filter by status
    page = client.get(url(project, "runs/"), {"page_size": 1}).json()
    assert len(page["results"]) == 1 and page["next"]
    assert [r["id"] for r in client.get(url(project, "runs/"), {"status": "succeeded"}).json()["results"]] == [old.pk]
    r = client.get(url(project, "runs/"), {"status": "sleeping"})
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "status"

    detail = client.get(url(project, f"runs/{new.pk}/")).json()
    assert detail["losses"] == [[1, 0.7], [2, 0.65], [3, 0.61]] and detail["progress"]["loss"] == 0.61


def test_run_of_another_project_is_404(project, manager):
    foreign = TrainingRun.objects.create(project=make_project("Other"), status="queued")
    client = token_client(manager)
    for method, path in [("get", url(project, f"runs/{foreign.pk}/")),
                         ("post", url(project, f"runs/{foreign.pk}/cancel/")),
                         ("get", url(project, "runs/999999/"))]:
        r = getattr(client, method)(path)
        assert r.status_code == 404, path
        assert r.json()["detail"] == "No such training run in this project."
    foreign.refresh_from_db()
    assert foreign.status == "queued"


def test_listing_runs_reaps_a_run_whose_worker_went_silent(project, manager):
    long_ago = timezone.now() - timedelta(minutes=5)
    run = TrainingRun.objects.create(project=project, status="running", worker_id="gone:1",
                                     started_at=long_ago, heartbeat_at=long_ago)
    row = token_client(manager).get(url(project, "runs/")).json()["results"][0]
    assert row["id"] == run.pk and row["status"] == "queued" and row["attempt"] == 2


def test_retrain_now_queues_one_run(project, manager, django_capture_on_commit_callbacks):
    client = token_client(manager)
    with django_capture_on_commit_callbacks(execute=True):
        r = client.post(url(project, "runs/"))
    assert r.status_code == 201, r.content
    body = r.json()
    run = TrainingRun.objects.get()
    assert body["id"] == run.pk and body["status"] == "queued" and body["losses"] == []
    assert run.requested_by == manager and run.reason == "requested by manager"
    assert tasks(TRAIN_TASK).get().args_kwargs["args"] == [run.pk]
    assert AuditEvent.objects.filter(verb="training.queued", actor=manager).count() == 1
    # a run is queued already: the same run comes back, nothing new is queued
    with django_capture_on_commit_callbacks(execute=True):
        again = client.post(url(project, "runs/"), {"reason": "more labels"}, format="json")
    assert again.status_code == 200 and again.json()["id"] == run.pk
    assert TrainingRun.objects.count() == 1 and tasks(TRAIN_TASK).count() == 1
    # once it has started, "Retrain now" queues the next one, with the reason given
    TrainingRun.objects.filter(pk=run.pk).update(status="running")
    r = client.post(url(project, "runs/"), {"reason": "  new guidelines  "}, format="json")
    assert r.status_code == 201 and r.json()["id"] != run.pk and r.json()["reason"] == "new guidelines"
    r = client.post(url(project, "runs/"), {"reason": "x" * 201}, format="json")
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "reason"


def test_cancel_a_queued_a_running_and_a_finished_run(project, manager):
    client = token_client(manager)
    queued, _ = training.queue_run(project)
    r = client.post(url(project, f"runs/{queued.pk}/cancel/"))
    assert r.status_code == 200, r.content
    assert r.json()["status"] == "cancelled" and r.json()["cancel_requested"] and r.json()["finished_at"]
    assert training.run_training(queued.pk) is None  # its task finds nothing to do

    running = TrainingRun.objects.create(project=project, status="running", worker_id="w",
                                         heartbeat_at=timezone.now())
    r = client.post(url(project, f"runs/{running.pk}/cancel/"))
    assert r.status_code == 200
    assert r.json()["status"] == "running" and r.json()["cancel_requested"]  # it stops at its next step
    assert AuditEvent.objects.filter(verb="training.cancelled", actor=manager).count() == 2

    for status in ("succeeded", "failed"):
        done = TrainingRun.objects.create(project=project, status=status, finished_at=timezone.now())
        r = client.post(url(project, f"runs/{done.pk}/cancel/"))
        assert r.status_code == 409
        assert r.json() == {"detail": f"Run {done.pk} is already over ({status}).", "errors": []}
    assert client.post(url(project, f"runs/{queued.pk}/cancel/")).status_code == 409  # cancelled already
    assert AuditEvent.objects.filter(verb="training.cancelled").count() == 2


# --- model versions -------------------------------------------------------------------------


def test_versions_list_and_detail(project, manager):
    old = ModelVersion.objects.create(
        project=project, version="0000111122223333", base_model="/models/minilm", seed=0,
        hyperparameters={"epochs": 2, "lr": 5e-5}, dataset_hash="ab" * 32, feedback_ids=[[1, 0], [1, 1]],
        metrics={"f1": 0.6, "n": 10}, created_at=timezone.now() - timedelta(hours=1))
    new = ModelVersion.objects.create(
        project=project, version="abc123def4567890", feedback_ids=[[1, 0], [1, 1], [2, 0]], is_promoted=True,
        promoted_at=timezone.now(), metrics={"accuracy": 0.8, "f1": 0.75, "auroc": 0.9, "ece": 0.05, "n": 40},
        baseline_metrics={"f1": 0.6, "n": 40, "version": old.version, "version_id": old.pk})
    ModelVersion.objects.create(project=project, version="broken", feedback_ids={"not": "a list"})
    foreign = ModelVersion.objects.create(project=make_project("Other"), version="elsewhere")
    client = token_client(manager)
    body = client.get(url(project, "versions/")).json()
    assert body["count"] == 3
    rows = {row["version"]: row for row in body["results"]}
    assert [row["id"] for row in body["results"]][1:] == [new.pk, old.pk]
    row = rows[new.version]
    assert "feedback_ids" not in row and row["feedback_count"] == 3
    assert row["is_promoted"] and row["promoted_at"] and row["metrics"]["f1"] == 0.75
    assert row["baseline_metrics"]["f1"] == 0.6 and row["baseline_metrics"]["version"] == old.version
    assert rows[old.version]["feedback_count"] == 2 and rows[old.version]["seed"] == 0
    assert rows[old.version]["hyperparameters"] == {"epochs": 2, "lr": 5e-5}
    assert rows[old.version]["base_model"] == "/models/minilm" and rows[old.version]["dataset_hash"] == "ab" * 32
    assert rows["broken"]["feedback_count"] == 0
    for key in ("id", "training_run", "created_at"):
        assert key in row

    detail = client.get(url(project, f"versions/{old.pk}/")).json()
    assert detail["feedback_ids"] == [[1, 0], [1, 1]] and detail["feedback_count"] == 2
    for path in (f"versions/{foreign.pk}/", f"versions/{foreign.pk}/promote/", "versions/999999/"):
        method = client.post if path.endswith("promote/") else client.get
        r = method(url(project, path))
        assert r.status_code == 404 and r.json()["detail"] == "No such model version in this project."
    assert not ModelVersion.objects.get(pk=foreign.pk).is_promoted


def test_promoting_a_version_that_is_not_in_the_registry_is_409(project, manager, settings, tmp_path):
    settings.MODEL_DIR = tmp_path / "models"
    version = ModelVersion.objects.create(project=project, version="0123456789abcdef")
    r = token_client(manager).post(url(project, f"versions/{version.pk}/promote/"))
    assert r.status_code == 409
    assert "not in the model registry" in r.json()["detail"] and r.json()["errors"] == []
    version.refresh_from_db()
    assert not version.is_promoted and not AuditEvent.objects.filter(verb="model.promoted").exists()


def test_promote_then_refuse_the_version_once_its_files_changed(project, labelled, manager, lfm,
                                                                django_capture_on_commit_callbacks):
    project.auto_promote = False
    project.save()
    run = train_now(project, capture=django_capture_on_commit_callbacks)
    version = run.model_version
    assert not version.is_promoted
    client = token_client(manager)

    # the run and its version over the API
    row = client.get(url(project, "runs/")).json()["results"][0]
    assert row["id"] == run.pk and row["status"] == "succeeded" and row["model_version"] == version.pk
    assert client.get(url(project, f"runs/{run.pk}/")).json()["losses"] == run.losses
    listed = client.get(url(project, "versions/")).json()["results"][0]
    assert listed["id"] == version.pk and listed["training_run"] == run.pk
    assert listed["feedback_count"] == len(version.feedback_ids) > 0
    assert listed["metrics"]["f1"] == version.metrics["f1"]

    with django_capture_on_commit_callbacks(execute=True):
        r = client.post(url(project, f"versions/{version.pk}/promote/"))
    assert r.status_code == 200, r.content
    assert r.json()["is_promoted"] and r.json()["promoted_at"] and "feedback_ids" not in r.json()
    assert AuditEvent.objects.get(verb="model.promoted").actor == manager
    assert tasks(SCORE_TASK).get().args_kwargs["args"] == [project.pk, version.pk]
    # promoting the promoted version again changes nothing
    r = client.post(url(project, f"versions/{version.pk}/promote/"))
    assert r.status_code == 200 and r.json()["is_promoted"]
    assert AuditEvent.objects.filter(verb="model.promoted").count() == 1

    weights = Path(version.path) / "model.safetensors"
    weights.chmod(0o644)
    with open(weights, "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02\x03")
    r = client.post(url(project, f"versions/{version.pk}/promote/"))
    assert r.status_code == 409
    assert "no longer match" in r.json()["detail"]
    assert tasks(SCORE_TASK).count() == 1


# --- the OpenAPI document ---------------------------------------------------------------------


def test_the_schema_documents_the_model_endpoints(project, manager):
    schema = json.loads(token_client(manager).get("/api/schema/", {"format": "json"}).content)
    paths = schema["paths"]
    for path, methods in [("/api/projects/{project_id}/runs/", ("get", "post")),
                          ("/api/projects/{project_id}/runs/{run_id}/", ("get",)),
                          ("/api/projects/{project_id}/runs/{run_id}/cancel/", ("post",)),
                          ("/api/projects/{project_id}/versions/", ("get",)),
                          ("/api/projects/{project_id}/versions/{version_id}/", ("get",)),
                          ("/api/projects/{project_id}/versions/{version_id}/promote/", ("post",))]:
        for method in methods:
            assert "`manage`" in paths[path][method]["description"], (path, method)
    assert set(paths["/api/projects/{project_id}/runs/{run_id}/cancel/"]["post"]["responses"]) >= {"200", "404", "409"}


# --- the scripted reviewer --------------------------------------------------------------------


def test_the_script_answers_like_the_review_page():
    script = load_script()
    item = {"payload": trajectory(4, with_prediction=False), "prediction": None}
    item["payload"]["steps"][3].pop("feedback")
    item["payload"]["steps"][3]["action"] = "look"
    data, flipped = script.build_answer(item, random.Random(0), noise=0.0)
    assert flipped == 0
    assert data["steps"] == [{"step": 0, "verdict": "agree"}, {"step": 1, "verdict": "agree"},
                             {"step": 2, "verdict": "agree"}, {"step": 3, "label": False}]
    # the model's prediction is what a step without LLM feedback shows
    item["prediction"] = {"data": {"steps": [{"step": 3, "probability": 0.9}]}}
    data, _ = script.build_answer(item, random.Random(0), noise=0.0)
    assert data["steps"][3] == {"step": 3, "verdict": "disagree"}
    data, flipped = script.build_answer(item, random.Random(0), noise=1.0)
    assert flipped == 3 and [s["verdict"] for s in data["steps"]] == ["disagree"] * 4
    assert script.rule_label({"action": "go to counter 1", "result": "Nothing happens."}) is False
    assert script.rule_label({"action": "take mug 1 from table 1", "result": "You pick up the mug 1."}) is True


class FakeClient:
    """Hands out items (from next/, or with a submit that asks for the next one); the answer to the
    first one is refused with `status`."""

    def __init__(self, script, items, status):
        self.script, self.items, self.status = script, list(items), status
        self.answered, self.skipped, self.claims = [], [], 0

    def post(self, path, body=None):
        if path.endswith("/next/"):
            self.claims += 1
            return (200, self.items.pop(0)) if self.items else (204, None)
        item_id = int(path.split("/")[-3])
        if path.endswith("/skip/"):
            self.skipped.append(item_id)
            return 204, None
        if not self.answered and not self.skipped:
            raise self.script.ApiError(self.status, "The item already has all the answers it needs.", "POST", path)
        self.answered.append(item_id)
        if path.endswith("?next=1"):  # the submit brings the next item
            return 201, {"next_item": self.items.pop(0) if self.items else None}
        return 201, {}


@pytest.mark.parametrize("status", [409, 400])
def test_the_script_moves_on_when_an_item_is_taken(status):
    script = load_script()
    items = [{"id": i, "payload": trajectory(2, with_prediction=False), "prediction": None} for i in (1, 2, 3)]
    fake = FakeClient(script, items, status)
    lines, errors = [], []
    stats = script.play(fake, 1, 100, noise=0.0, out=lines.append, err=errors.append)
    assert fake.skipped == [1] and fake.answered == [2, 3]
    assert fake.claims == 2  # the first item and the one after the refusal; item 3 came with the submit
    assert stats == {"items": 2, "labels": 4, "flipped": 0, "skipped": 1}
    assert "item 1" in errors[0] and "all the answers" in errors[0]
    assert lines[-2:] == ["the queue is empty for this reviewer", "answered 2 items with 4 step labels (0 LLM labels flipped)"]


@pytest.mark.django_db(transaction=True)
def test_the_script_plays_a_reviewer_against_a_live_server(live_server, capsys):
    script = load_script()
    project = make_project(retrain_every=9)
    make_items(project, count=5, n_steps=3)
    add_member(project, Role.MANAGER, "alice")
    code = script.main(["--host", live_server.url, "--username", "alice", "--password", PASSWORD,
                        "--project", str(project.pk), "--labels", "7", "--noise", "0.5", "--seed", "3"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "answered 3 items with 9 step labels" in out
    assert Final.objects.filter(item__project=project).count() == 3
    run = TrainingRun.objects.get(project=project)  # 9 final step labels: the threshold
    assert run.status == "queued" and run.labels_seen == 9
    assert "training runs (1 in all, newest first):" in out and f"run {run.pk} queued" in out

    # a second reviewer answers the rest of the queue; --watch follows the newest run to its end
    TrainingRun.objects.filter(pk=run.pk).update(status="succeeded", finished_at=timezone.now())
    baseline = ModelVersion.objects.create(project=project, version="1111222233334444", is_promoted=True,
                                           metrics={"f1": 0.5})
    version = ModelVersion.objects.create(project=project, version="abcdef0123456789", training_run=run,
                                          metrics={"f1": 0.8125, "n": 12},
                                          baseline_metrics={"f1": 0.5, "version": baseline.version})
    TrainingRun.objects.filter(pk=run.pk).update(model_version=version)
    project.retrain_every = 0
    project.save()
    add_member(project, Role.MANAGER, "bob")
    code = script.main(["--host", live_server.url, "--username", "bob", "--password", PASSWORD,
                        "--project", str(project.pk), "--labels", "100", "--watch", "--poll", "0.1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "the queue is empty for this reviewer" in out and "answered 2 items with 6 step labels" in out
    assert f"run {run.pk} succeeded" in out
    assert "version abcdef012345: held-out F1 0.812 on 12 steps vs baseline 111122223333 F1 0.500" in out


@pytest.mark.django_db(transaction=True)
def test_several_reviewers_agree_and_settle_a_project_that_needs_two_answers(live_server, capsys):
    script = load_script()
    project = make_project(answers_per_item=2, retrain_every=12)
    make_items(project, count=6, n_steps=3)
    add_member(project, Role.ANNOTATOR, "ann")
    add_member(project, Role.MANAGER, "bob")
    code = script.main(["--host", live_server.url, "--username", "ann,bob", "--password", PASSWORD,
                        "--project", str(project.pk), "--labels", "12", "--noise", "0.3", "--seed", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "== ann" in out and "== bob" in out
    # the same 4 items from both; flips follow the item, so both reviewers give the same labels
    assert Final.objects.filter(item__project=project).count() == 4
    assert not Item.objects.filter(project=project, state="done").exists()
    run = TrainingRun.objects.get(project=project)  # 12 final step labels: the threshold
    assert run.labels_seen == 12 and f"run {run.pk} queued" in out  # listed by bob, the manager


@pytest.mark.django_db(transaction=True)
def test_the_script_explains_what_goes_wrong(live_server, capsys):
    script = load_script()
    project = make_project()
    make_items(project, count=1, n_steps=2)
    add_member(project, Role.ANNOTATOR, "ann")
    add_member(project, Role.VIEWER, "val")
    args = ["--host", live_server.url, "--project", str(project.pk), "--labels", "2"]

    assert script.main([*args, "--username", "ann", "--password", "wrong"]) == 2
    assert "cannot log in as ann" in capsys.readouterr().err
    assert script.main([*args, "--username", "val", "--password", PASSWORD]) == 1
    assert "val may not answer" in capsys.readouterr().err
    # an annotator labels, but may not see the training runs
    assert script.main([*args, "--username", "ann", "--password", PASSWORD]) == 1
    captured = capsys.readouterr()
    assert "answered 1 items with 2 step labels" in captured.out
    assert "may not see the project's training runs" in captured.err
    assert script.main(["--host", live_server.url, "--project", "999999", "--username", "ann",
                        "--password", PASSWORD]) == 1
    assert "no such project" in capsys.readouterr().err
    assert script.main(["--host", "http://127.0.0.1:9", "--project", "1", "--username", "ann",
                        "--password", PASSWORD]) == 2
    assert "cannot reach" in capsys.readouterr().err
