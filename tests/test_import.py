"""Imports: streaming parse, all-or-nothing batches, errors people can act on, the upload pages, the CLI."""

import bz2
import gzip
import io
import json
import lzma
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from annotation import importing
from annotation.importing import (
    ImportRejected,
    create_import_job,
    fail_stale_imports,
    import_path,
    run_import,
)
from annotation.kinds import get_kind
from annotation.models import ImportJob, Item, ItemPayload, Prediction, Role

from .factories import PASSWORD, add_member, make_items, make_project, trajectory

pytestmark = pytest.mark.django_db(transaction=True)


def jsonl(*values) -> bytes:
    return b"".join(orjson.dumps(v) + b"\n" for v in values)


def write(tmp_path, name, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def rollout(n_steps=3, setting_id="pick-apple-7"):
    """One rollout in the LFM code's format: the first entry is the reset, then one per action."""
    def obs(i):
        return {"instruction": "Put a clean apple in the fridge", "observation": f"You see counter {i}."}

    traj = [{"action": None, "prompt": None,
             "after": {"obs": obs(0), "info": {"env": "alfworld", "admissible_actions": ["go to counter 1", "look"]},
                       "reward": None, "terminated": False}}]
    for i in range(1, n_steps + 1):
        traj.append({"action": f"go to counter {i}", "prompt": f"prompt {i}",
                     "after": {"obs": obs(i), "info": {"admissible_actions": [f"go to counter {i + 1}"]},
                               "reward": 1.0 if i == n_steps else 0.0, "terminated": i == n_steps}})
    return {"traj": traj, "setting_id": setting_id}


def all_rows(project):
    return (Item.objects.filter(project=project).count(),
            ItemPayload.objects.filter(item__project=project).count(),
            Prediction.objects.filter(item__project=project).count())


# --- the engine ---------------------------------------------------------------------------------


def test_good_jsonl_imports_every_line_with_payload_prediction_and_priority(tmp_path):
    project = make_project()
    make_items(project, count=2)  # the import continues the project's sequence
    lines = [trajectory(4, tid="a"), trajectory(2, tid="b", with_prediction=False), trajectory(3, tid="c")]
    path = write(tmp_path, "good.jsonl", jsonl(lines[0]) + b"   \n" + jsonl(*lines[1:]))

    job = import_path(project, None, path)

    assert job.status == ImportJob.Status.SUCCEEDED, job.errors
    assert (job.items_imported, job.steps_imported, job.error_count) == (3, 9, 0)
    assert job.lines_read == 4  # the blank line is counted as a line and skipped
    assert job.format == "jsonl"
    items = list(Item.objects.filter(import_job=job).order_by("seq"))
    assert [i.external_id for i in items] == ["a", "b", "c"]
    assert [i.seq for i in items] == [3, 4, 5]
    assert all(i.state == Item.State.OPEN for i in items)
    assert [i.step_count for i in items] == [4, 2, 3]
    kind = get_kind(project.kind)
    expected = kind.parse_line(lines[0], 1)
    assert items[0].payload.data == expected.payload
    pred = items[0].predictions.get()
    assert pred.model_version == "lfm-test"
    assert pred.data == expected.prediction
    assert pred.uncertainty == pytest.approx(kind.uncertainty(expected.prediction))
    assert items[0].priority == pytest.approx(pred.uncertainty)
    assert items[1].priority == 0.0 and not items[1].predictions.exists()
    assert Item.objects.live().filter(project=project).count() == 5
    assert path.exists()  # a file given on the command line is left in place


def test_malformed_file_fails_whole_with_line_and_field_errors(tmp_path):
    project = make_project()
    missing = trajectory(2)
    del missing["instruction"]
    wrong_type = trajectory(2)
    wrong_type["steps"][1]["action"] = 5
    data = b"".join([
        jsonl(trajectory(2, tid="ok-1")),
        b'{"instruction": "x", "steps": [\n',  # bad JSON
        jsonl(missing),
        jsonl(wrong_type),
        jsonl(trajectory(2, tid="ok-2")),
    ])
    job = import_path(project, None, write(tmp_path, "bad.jsonl", data))

    assert job.status == ImportJob.Status.FAILED
    assert job.error_count == 3
    by_line = {e["line"]: e for e in job.errors}
    assert set(by_line) == {2, 3, 4}
    assert by_line[2]["field"] == "(json)" and "invalid JSON" in by_line[2]["message"]
    assert by_line[3]["field"] == "instruction"
    assert by_line[4]["field"] == "steps.1.action"
    assert job.items_imported == 0
    assert all_rows(project) == (0, 0, 0)


def test_errors_after_a_full_batch_still_leave_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(importing, "BATCH_ITEMS", 2)
    project = make_project()
    bad = trajectory(2)
    bad["steps"] = "not a list"
    data = jsonl(*[trajectory(2, tid=f"t{i}") for i in range(5)], bad, *[trajectory(1) for _ in range(3)])
    job = import_path(project, None, write(tmp_path, "late.jsonl", data))
    assert job.status == ImportJob.Status.FAILED
    assert [(e["line"], e["field"]) for e in job.errors] == [(6, "steps")]
    assert job.lines_read == 9  # kept reading to the end for more errors
    assert all_rows(project) == (0, 0, 0)


def test_staged_rows_are_invisible_until_the_file_is_done(tmp_path, monkeypatch):
    monkeypatch.setattr(importing, "BATCH_ITEMS", 2)
    project = make_project()
    seen = []

    def progress(job):
        seen.append((Item.objects.filter(project=project, state=Item.State.STAGED).count(),
                     Item.objects.live().filter(project=project).count(),
                     ImportJob.objects.get(pk=job.pk).items_imported))

    job = import_path(project, None, write(tmp_path, "s.jsonl", jsonl(*[trajectory(1) for _ in range(5)])),
                      on_progress=progress)
    assert job.status == ImportJob.Status.SUCCEEDED
    assert seen[:2] == [(2, 0, 2), (4, 0, 4)]
    assert Item.objects.live().filter(project=project).count() == 5
    assert not Item.objects.filter(project=project, state=Item.State.STAGED).exists()


def test_lfm_rollouts_one_per_line(tmp_path):
    project = make_project()
    job = import_path(project, None, write(tmp_path, "rollouts.jsonl", jsonl(rollout(3, "a"), rollout(2, "b"))))
    assert job.status == ImportJob.Status.SUCCEEDED, job.errors
    items = list(Item.objects.filter(project=project).order_by("seq"))
    assert [(i.external_id, i.step_count) for i in items] == [("a", 3), ("b", 2)]
    payload = items[0].payload.data
    assert payload["instruction"] == "Put a clean apple in the fridge"
    assert payload["steps"][0] == {
        "observation": "You see counter 0.", "action": "go to counter 1", "result": "You see counter 1.",
        "reward": 0.0, "admissible_actions": ["go to counter 1", "look"], "prompt": "prompt 1",
    }
    assert payload["outcome"] == {"success": True, "reward": 1.0}


def test_a_single_pretty_printed_rollout_file(tmp_path):
    project = make_project()
    path = write(tmp_path, "one.json", json.dumps(rollout(4, 17), indent=2).encode())
    job = import_path(project, None, path)
    assert job.status == ImportJob.Status.SUCCEEDED, job.errors
    assert job.format == "json"
    item = Item.objects.get(project=project)
    assert (item.external_id, item.step_count) == ("17", 4)


def test_a_json_array_of_trajectories(tmp_path):
    project = make_project()
    bad = trajectory(1)
    bad["outcome"] = {"success": "very"}
    ok = json.dumps([trajectory(2, tid="x"), trajectory(3, tid="y")], indent=1).encode()
    job = import_path(project, None, write(tmp_path, "arr.json", ok))
    assert job.status == ImportJob.Status.SUCCEEDED, job.errors
    assert list(Item.objects.filter(project=project).order_by("seq").values_list("external_id", flat=True)) == ["x", "y"]

    other = make_project("other")
    job = import_path(other, None, write(tmp_path, "arr2.json", json.dumps([trajectory(1), bad]).encode()))
    assert job.status == ImportJob.Status.FAILED
    assert [(e["line"], e["field"]) for e in job.errors] == [(2, "outcome.success")]
    assert all_rows(other) == (0, 0, 0)


def test_a_broken_pretty_printed_document_reports_where(tmp_path):
    project = make_project()
    text = json.dumps(rollout(2), indent=2)
    broken = text.replace('"terminated": false', '"terminated": fals', 1)
    line = next(i for i, row in enumerate(broken.splitlines(), 1) if "fals" in row)
    job = import_path(project, None, write(tmp_path, "broken.json", broken.encode()))
    assert job.status == ImportJob.Status.FAILED
    assert job.error_count == 1
    assert job.errors[0]["line"] == line and job.errors[0]["field"] == "(json)"


@pytest.mark.parametrize("compress,name", [(gzip.compress, "t.jsonl.gz"), (bz2.compress, "t.jsonl.bz2"),
                                           (lzma.compress, "t.jsonl.xz")])
def test_compressed_files_are_detected_by_magic_bytes(tmp_path, compress, name):
    project = make_project()
    data = compress(jsonl(*[trajectory(3, tid=f"z{i}") for i in range(4)]))
    job = import_path(project, None, write(tmp_path, name.replace(".", "_"), data))  # the name says nothing
    assert job.status == ImportJob.Status.SUCCEEDED, job.errors
    assert job.items_imported == 4 and job.bytes_read == len(data)


def test_a_damaged_gzip_file_fails_cleanly(tmp_path):
    project = make_project()
    data = gzip.compress(jsonl(*[trajectory(3) for _ in range(50)]))
    job = import_path(project, None, write(tmp_path, "cut.gz", data[: len(data) // 2]))
    assert job.status == ImportJob.Status.FAILED
    assert "damaged" in job.errors[-1]["message"]
    assert all_rows(project) == (0, 0, 0)


def test_a_line_over_the_limit_is_an_error_and_reading_goes_on(tmp_path, monkeypatch):
    monkeypatch.setattr(importing, "MAX_LINE_BYTES", 4096)
    project = make_project()
    huge = trajectory(1)
    huge["steps"][0]["observation"] = "x" * 10000
    bad = trajectory(1)
    del bad["steps"]
    job = import_path(project, None, write(tmp_path, "long.jsonl", jsonl(trajectory(1), huge, bad)))
    assert job.status == ImportJob.Status.FAILED
    assert [(e["line"], e["field"]) for e in job.errors] == [(2, "(line)"), (3, "steps")]
    assert "longer than" in job.errors[0]["message"]


def test_a_file_without_items_fails_with_a_clear_message(tmp_path):
    project = make_project()
    job = import_path(project, None, write(tmp_path, "blank.jsonl", b"\n  \n\n"))
    assert job.status == ImportJob.Status.FAILED
    assert "no items" in job.errors[0]["message"]


def test_text_with_escapes_and_unicode_round_trips(tmp_path):
    project = make_project()
    t = trajectory(1, tid="tab\there")
    t["steps"][0]["observation"] = 'back\\slash "quoted"\nnew line\ttab \u00e9\u4e2d\U0001f600'
    job = import_path(project, None, write(tmp_path, "esc.jsonl", jsonl(t)))
    assert job.status == ImportJob.Status.SUCCEEDED, job.errors
    item = Item.objects.get(project=project)
    assert item.external_id == "tab\there"
    assert item.payload.data["steps"][0]["observation"] == t["steps"][0]["observation"]


def test_a_nul_character_is_refused_on_every_database(tmp_path):
    project = make_project()
    t = trajectory(1)
    t["steps"][0]["action"] = "a\u0000b"
    job = import_path(project, None, write(tmp_path, "nul.jsonl", jsonl(t)))
    assert job.status == ImportJob.Status.FAILED
    assert "NUL" in job.errors[0]["message"]


def test_only_the_first_100_errors_are_kept_but_all_are_counted(tmp_path):
    project = make_project()
    job = import_path(project, None, write(tmp_path, "many.jsonl", b"nope\n" * 150))
    assert job.status == ImportJob.Status.FAILED
    assert job.error_count == 150 and len(job.errors) == 100


def test_parser_processes_give_the_same_result(tmp_path, monkeypatch):
    monkeypatch.setattr(importing, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(importing, "PARSE_CHUNK_LINES", 7)
    project = make_project()
    with override_settings(IMPORT_PARSE_PROCESSES=2):
        job = import_path(project, None, write(tmp_path, "p.jsonl", jsonl(*[trajectory(2, tid=f"p{i}") for i in range(60)])))
        assert job.status == ImportJob.Status.SUCCEEDED, job.errors
        assert list(Item.objects.filter(project=project).order_by("seq").values_list("external_id", flat=True)) == [
            f"p{i}" for i in range(60)]
        bad = make_project("bad")
        lines = [trajectory(1) for _ in range(40)]
        lines[33] = {"instruction": "x"}
        job = import_path(bad, None, write(tmp_path, "pb.jsonl", jsonl(*lines)))
    assert job.status == ImportJob.Status.FAILED
    assert [(e["line"], e["field"]) for e in job.errors] == [(34, "steps")]
    assert all_rows(bad) == (0, 0, 0)


def test_a_job_runs_once(tmp_path):
    project = make_project()
    job = import_path(project, None, write(tmp_path, "once.jsonl", jsonl(trajectory(1))))
    assert run_import(job.pk).status == ImportJob.Status.SUCCEEDED
    assert Item.objects.filter(project=project).count() == 1


# --- jobs, uploads and the worker -----------------------------------------------------------------


def test_create_import_job_stores_the_upload_and_queues_the_task():
    project = make_project()
    upload = SimpleUploadedFile("data.jsonl", jsonl(trajectory(2), trajectory(3)))
    job = create_import_job(project, None, upload, "../../etc/data.jsonl")
    assert job.status == ImportJob.Status.QUEUED
    assert job.filename == "data.jsonl"
    stored = Path(settings.DATA_DIR) / job.path
    assert stored.parent == Path(settings.IMPORT_DIR) and stored.read_bytes() == jsonl(trajectory(2), trajectory(3))
    queued = DBTaskResult.objects.get(task_path="annotation.tasks.run_import_task")
    assert queued.queue_name == "default" and queued.args_kwargs["args"] == [job.pk]

    job = run_import(job.pk)
    assert job.status == ImportJob.Status.SUCCEEDED and job.items_imported == 2
    assert not stored.exists()  # the uploaded copy goes once imported


def test_a_job_whose_task_cannot_be_queued_fails_at_once(monkeypatch):
    from annotation import tasks

    class Unreachable:
        def enqueue(self, *args):
            raise ConnectionError("task queue unreachable")

    monkeypatch.setattr(tasks, "run_import_task", Unreachable())
    job = create_import_job(make_project(), None, io.BytesIO(jsonl(trajectory(1))), "q.jsonl")
    job.refresh_from_db()
    assert job.status == ImportJob.Status.FAILED
    assert "could not be queued: task queue unreachable" in job.errors[0]["message"]
    assert not (Path(settings.DATA_DIR) / job.path).exists()


def test_uploads_over_the_limit_and_empty_ones_are_refused():
    project = make_project()
    import_dir = Path(settings.IMPORT_DIR)
    before = set(import_dir.iterdir()) if import_dir.exists() else set()
    with override_settings(IMPORT_MAX_BYTES=100):
        with pytest.raises(ImportRejected, match="larger than the import limit"):
            create_import_job(project, None, io.BytesIO(b"x" * 101), "big.jsonl")
    with pytest.raises(ImportRejected, match="empty"):
        create_import_job(project, None, io.BytesIO(b""), "empty.jsonl")
    with pytest.raises(ImportRejected, match="Unknown import format"):
        create_import_job(project, None, io.BytesIO(b"{}"), "x.csv", fmt="csv")
    assert not ImportJob.objects.exists()
    assert set(import_dir.iterdir()) == before  # no partial copy is left behind


def test_a_silent_running_job_is_failed_and_its_staged_rows_deleted():
    project = make_project()
    old = timezone.now() - timedelta(minutes=10)
    stale = ImportJob.objects.create(project=project, filename="s.jsonl", path="imports/none",
                                     status=ImportJob.Status.RUNNING, started_at=old, heartbeat_at=old)
    alive = ImportJob.objects.create(project=project, filename="a.jsonl", path="imports/none",
                                     status=ImportJob.Status.RUNNING, started_at=old, heartbeat_at=timezone.now())
    for job in (stale, alive):
        for item in make_items(project, count=2):
            Item.objects.filter(pk=item.pk).update(state=Item.State.STAGED, import_job=job)

    assert fail_stale_imports() == 1

    stale.refresh_from_db()
    alive.refresh_from_db()
    assert stale.status == ImportJob.Status.FAILED and stale.finished_at is not None
    assert "no sign of life" in stale.errors[-1]["message"]
    assert not Item.objects.filter(import_job=stale).exists()
    assert alive.status == ImportJob.Status.RUNNING
    assert Item.objects.filter(import_job=alive).count() == 2


def test_a_worker_whose_job_was_failed_under_it_stops_and_cleans_up(tmp_path, monkeypatch):
    monkeypatch.setattr(importing, "BATCH_ITEMS", 2)
    project = make_project()

    def declared_dead(job):
        ImportJob.objects.filter(pk=job.pk).update(status=ImportJob.Status.FAILED)

    job = import_path(project, None, write(tmp_path, "w.jsonl", jsonl(*[trajectory(1) for _ in range(6)])),
                      on_progress=declared_dead)
    assert job.status == ImportJob.Status.FAILED
    assert all_rows(project) == (0, 0, 0)


# --- pages -------------------------------------------------------------------------------------------


def login(client, user):
    assert client.login(username=user.username, password=PASSWORD)


def test_upload_page_then_the_worker_then_the_detail_page(client):
    project = make_project()
    manager = add_member(project, Role.MANAGER)
    login(client, manager)
    url = reverse("import-list", args=[project.pk])
    assert client.get(url).status_code == 200

    data = jsonl(trajectory(3, tid="u1"), trajectory(2, tid="u2"))
    response = client.post(url, {"format": "auto", "file": SimpleUploadedFile("mine.jsonl", data)})
    job = ImportJob.objects.get(project=project)
    assert response.status_code == 302
    assert response["Location"] == reverse("import-detail", args=[project.pk, job.pk])
    assert job.created_by == manager and job.size_bytes == len(data)

    progress_url = reverse("import-progress", args=[project.pk, job.pk])
    queued = client.get(progress_url).content.decode()
    assert f'hx-get="{progress_url}"' in queued and 'hx-trigger="every 1s"' in queued

    run_import(job.pk)

    done = client.get(progress_url).content.decode()
    assert "hx-get" not in done and "succeeded" in done
    page = client.get(reverse("import-detail", args=[project.pk, job.pk])).content.decode()
    assert "mine.jsonl" in page and "succeeded" in page
    listing = client.get(url).content.decode()
    assert "mine.jsonl" in listing
    assert Item.objects.live().filter(project=project).count() == 2


def test_the_detail_page_lists_line_field_and_message(client):
    project = make_project()
    manager = add_member(project, Role.MANAGER)
    login(client, manager)
    data = jsonl(trajectory(1), {"instruction": "no steps"})
    client.post(reverse("import-list", args=[project.pk]), {"file": SimpleUploadedFile("bad.jsonl", data)})
    job = run_import(ImportJob.objects.get(project=project).pk)
    assert job.status == ImportJob.Status.FAILED
    page = client.get(reverse("import-detail", args=[project.pk, job.pk])).content.decode()
    assert "<td>2</td>" in page and "<code>steps</code>" in page and "Nothing from this file was imported" in page


def test_an_upload_over_the_limit_is_refused_on_the_page(client):
    project = make_project()
    login(client, add_member(project, Role.MANAGER))
    with override_settings(IMPORT_MAX_BYTES=1000):
        response = client.post(reverse("import-list", args=[project.pk]),
                               {"format": "auto", "file": SimpleUploadedFile("big.jsonl", b"x" * 5000)})
    assert response.status_code == 400
    assert "larger than the import limit" in response.content.decode()
    assert response.wsgi_request.import_upload_too_big  # stopped while streaming in, not after
    assert not ImportJob.objects.exists()


def test_only_managers_import(client):
    project = make_project()
    reviewer = add_member(project, Role.REVIEWER)
    outsider = add_member(make_project("elsewhere"), Role.MANAGER)
    url = reverse("import-list", args=[project.pk])
    login(client, reviewer)
    assert client.get(url).status_code == 403
    assert client.post(url, {"file": SimpleUploadedFile("x.jsonl", jsonl(trajectory(1)))}).status_code == 403
    login(client, outsider)
    assert client.get(url).status_code == 404
    assert not ImportJob.objects.exists()


def test_the_list_page_fails_stale_jobs(client):
    project = make_project()
    login(client, add_member(project, Role.MANAGER))
    old = timezone.now() - timedelta(minutes=30)
    job = ImportJob.objects.create(project=project, filename="dead.jsonl", path="imports/none",
                                   status=ImportJob.Status.RUNNING, started_at=old, heartbeat_at=old)
    client.get(reverse("import-list", args=[project.pk]))
    job.refresh_from_db()
    assert job.status == ImportJob.Status.FAILED


# --- command line ----------------------------------------------------------------------------------


def test_import_items_command(tmp_path):
    project = make_project()
    out, err = io.StringIO(), io.StringIO()
    call_command("import_items", str(project.pk), str(write(tmp_path, "c.jsonl", jsonl(trajectory(2), trajectory(2)))),
                 stdout=out, stderr=err)
    assert "2 items, 4 steps" in out.getvalue()
    assert Item.objects.live().filter(project=project).count() == 2

    bad = write(tmp_path, "c2.jsonl", jsonl(trajectory(1), {"instruction": ""}))
    err = io.StringIO()
    with pytest.raises(CommandError, match="failed with"):
        call_command("import_items", str(project.pk), str(bad), stdout=io.StringIO(), stderr=err)
    assert "line 2: instruction:" in err.getvalue() and "line 2: steps:" in err.getvalue()
    assert Item.objects.filter(project=project).count() == 2
