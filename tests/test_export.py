"""Exports: full records and the kind's formats, filters, streaming responses, the admin action, the CLI."""

import asyncio
import csv
import io
from datetime import datetime, timezone as dt_timezone

import orjson
import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections
from django.http import StreamingHttpResponse
from django.test import AsyncClient
from django.urls import reverse

from annotation import answers
from annotation.exporting import ExportFilters, available_formats, iter_records, stream_export
from annotation.kinds.lfm import CSV_HEADER
from annotation.models import Answer, Final, Item, Prediction, Role

from .factories import PASSWORD, add_member, full_answer, make_items, make_project

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def setup():
    """Three 3-step items: the first two answered (agree on every step) and final, the third untouched."""
    project = make_project("Kitchen Runs", answers_per_item=1)
    manager = add_member(project, Role.MANAGER, "boss")
    ann = add_member(project, Role.ANNOTATOR, "ann")
    items = make_items(project, count=3, n_steps=3)
    for item in items[:2]:
        answers.submit(item, ann, full_answer(item), time_spent_ms=1500)
    return project, manager, ann, items


def export(project, fmt, **params) -> bytes:
    filters = ExportFilters.from_params(params) if params else None
    return b"".join(stream_export(project, fmt, filters))


def lines(data: bytes) -> list:
    return [orjson.loads(x) for x in data.splitlines()]


def test_formats_are_the_core_jsonl_then_the_kind_s(setup):
    project = setup[0]
    assert list(available_formats(project)) == ["jsonl", "lfm_steps", "lfm_imitation", "csv"]


def test_full_record_jsonl(setup):
    project, _, ann, items = setup
    records = lines(export(project, "jsonl"))
    assert [r["id"] for r in records] == [i.pk for i in items]
    first = records[0]
    assert set(first) == {"id", "external_id", "seq", "state", "step_count", "payload", "prediction", "answers",
                          "final", "lineage"}
    assert first["external_id"] == items[0].external_id and first["seq"] == items[0].seq
    assert first["state"] == Item.State.FINAL
    assert first["payload"] == items[0].payload.data
    assert first["prediction"]["model_version"] == "lfm-test"
    assert first["prediction"]["steps"] == Prediction.objects.get(item=items[0]).data["steps"]
    (answer,) = first["answers"]
    stored = Answer.objects.get(item=items[0])
    assert answer["user"] == "ann" and answer["status"] == "submitted"
    assert answer["time_spent_ms"] == 1500 and answer["guidelines_version"] == 1
    assert answer["model_version"] == "lfm-test" and answer["data"] == stored.data
    assert datetime.fromisoformat(answer["submitted_at"]) == stored.submitted_at
    final = Final.objects.get(item=items[0])
    assert first["final"]["method"] == "unanimous" and first["final"]["decided_by"] is None
    assert first["final"]["data"] == final.data
    lineage = first["lineage"]
    assert lineage["project"] == {"id": project.pk, "name": "Kitchen Runs", "kind": "lfm_trajectory",
                                  "guidelines_version": 1}
    assert lineage["prediction"]["model_version"] == "lfm-test"
    assert lineage["guidelines_versions"] == [1] and lineage["answer_model_versions"] == ["lfm-test"]
    third = records[2]
    assert third["answers"] == [] and third["final"] is None and third["state"] == Item.State.OPEN


def test_iter_records_matches_the_jsonl_export(setup):
    project = setup[0]
    exported = lines(export(project, "jsonl"))
    assert orjson.loads(orjson.dumps(list(iter_records(project)))) == exported


def test_latest_prediction_wins_and_staged_items_stay_out(setup):
    project, _, _, items = setup
    Prediction.objects.create(item=items[2], model_version="lfm-v2", uncertainty=0.1,
                              data={"model_version": "lfm-v2", "steps": [{"step": 0, "probability": 0.9}]})
    staged = make_items(project, count=1)[0]
    Item.objects.filter(pk=staged.pk).update(state=Item.State.STAGED)
    records = lines(export(project, "jsonl"))
    assert staged.pk not in [r["id"] for r in records]
    assert records[2]["prediction"]["model_version"] == "lfm-v2"
    assert records[2]["lineage"]["prediction"]["uncertainty"] == 0.1


def test_final_only(setup):
    project, _, _, items = setup
    assert [r["id"] for r in lines(export(project, "jsonl", final_only="1"))] == [items[0].pk, items[1].pk]


def test_annotator_filter_keeps_only_that_user_s_items_and_answers():
    project = make_project(answers_per_item=2)
    a = add_member(project, Role.ANNOTATOR, "alice")
    b = add_member(project, Role.ANNOTATOR, "bob")
    both, only_b, none = make_items(project, count=3)
    answers.submit(both, a, full_answer(both))
    answers.submit(both, b, full_answer(both))
    answers.submit(only_b, b, full_answer(only_b))
    records = lines(export(project, "jsonl", annotator="alice"))
    assert [r["id"] for r in records] == [both.pk]
    assert [x["user"] for x in records[0]["answers"]] == ["alice"]
    assert records[0]["final"] is not None
    assert [r["id"] for r in lines(export(project, "jsonl", annotator="bob"))] == [both.pk, only_b.pk]
    assert len(lines(export(project, "jsonl"))) == 3


def test_since_and_until_apply_to_submitted_and_decided_dates(setup):
    project, _, _, items = setup
    jan = datetime(2024, 1, 10, 12, tzinfo=dt_timezone.utc)
    Answer.objects.filter(item=items[0]).update(submitted_at=jan)
    Final.objects.filter(item=items[0]).update(decided_at=jan)
    ids = lambda **kw: [r["id"] for r in lines(export(project, "jsonl", **kw))]  # noqa: E731
    assert ids(since="2024-01-01", until="2024-01-31") == [items[0].pk]
    assert ids(since="2024-01-10", until="2024-01-10") == [items[0].pk]  # both ends are whole days
    assert ids(until="2024-01-09") == []
    assert ids(since="2024-01-11") == [items[1].pk]
    assert ids(since="2024-01-11", final_only="1") == [items[1].pk]
    # an answer outside the window is left out of the record, a final inside keeps the item
    Final.objects.filter(item=items[0]).update(decided_at=datetime(2024, 2, 1, tzinfo=dt_timezone.utc))
    (record,) = lines(export(project, "jsonl", since="2024-02-01", until="2024-02-01"))
    assert record["id"] == items[0].pk and record["answers"] == [] and record["final"] is not None


def test_bad_filters_raise_clear_errors(setup):
    for params, message in [
        ({"since": "yesterday"}, "since: 'yesterday' is not a date"),
        ({"until": "2024-13-01"}, "until: '2024-13-01' is not a date"),
        ({"final_only": "maybe"}, "final_only"),
        ({"annotator": "nobody"}, "no user called 'nobody'"),
        ({"since": "2024-02-01", "until": "2024-01-01"}, "since is after until"),
    ]:
        with pytest.raises(ValueError, match=message):
            ExportFilters.from_params(params)
    with pytest.raises(ValueError, match="Unknown export format"):
        stream_export(setup[0], "xml", ExportFilters())


def test_lfm_steps_rows(setup):
    project, _, _, items = setup
    rows = lines(export(project, "lfm_steps"))
    assert len(rows) == 6  # three steps of each final item
    row = rows[0]
    assert {"task", "step", "action", "before", "after", "label", "feedback"} <= set(row)
    payload = items[0].payload.data
    assert row["task"] == payload["instruction"] and row["step"] == 0
    assert row["action"] == payload["steps"][0]["action"]
    assert row["before"] == payload["steps"][0]["observation"] and row["after"] == payload["steps"][0]["result"]
    assert [r["label"] for r in rows[:3]] == [True, False, True]  # agreed with the LLM feedback
    assert row["feedback"] == ["step 0 moves toward the goal"]


def test_lfm_imitation_has_only_productive_final_steps(setup):
    project, _, _, items = setup
    rows = lines(export(project, "lfm_imitation"))
    assert [r["out"] for r in rows] == ["go to counter 0", "go to counter 2"] * 2
    assert set(rows[0]) == {"inp", "out"}
    assert rows[0]["inp"].startswith("Task: Put the apple in the fridge")


@pytest.mark.parametrize("fmt", ["lfm_steps", "lfm_imitation", "csv"])
def test_kind_formats_give_the_rows_of_every_full_record(setup, fmt):
    """The step formats read only items with a final label and decode only what their rows read;
    the result is the same as applying the rows to every fully decoded record."""
    project = setup[0]
    spec = available_formats(project)[fmt]
    expected = [row for record in iter_records(project) for row in spec.rows(record)]
    if fmt == "csv":
        got = list(csv.reader(io.StringIO(export(project, fmt).decode())))[1:]
        expected = [[str(v) for v in row] for row in expected]
    else:
        got = lines(export(project, fmt))
    assert got and got == expected


def test_csv_has_a_header_and_one_row_per_step(setup):
    project, _, _, items = setup
    text = export(project, "csv").decode()
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == CSV_HEADER
    assert len(rows) == 1 + 9
    body = [dict(zip(CSV_HEADER, r)) for r in rows[1:]]
    assert [b["step"] for b in body[:3]] == ["0", "1", "2"]
    assert body[0]["item_id"] == str(items[0].pk) and body[0]["labels"] == "ann=yes"
    assert body[1]["final_label"] == "no" and body[8]["final_label"] == ""
    filtered = list(csv.reader(io.StringIO(export(project, "csv", final_only="1").decode())))
    assert len(filtered) == 1 + 6


@pytest.mark.parametrize("prefetch", [True, False])
def test_chunks_are_batched_and_records_cross_chunk_boundaries(setup, monkeypatch, prefetch):
    from annotation import exporting

    project = setup[0]
    whole = export(project, "jsonl")
    make_items(project, count=7)
    monkeypatch.setattr(exporting, "EXPORT_CHUNK", 2)
    monkeypatch.setattr(exporting, "OUTPUT_CHUNK_BYTES", 1)
    monkeypatch.setattr(exporting, "EXPORT_PREFETCH", prefetch)
    chunks = list(stream_export(project, "jsonl"))
    assert len(chunks) == 10
    records = lines(b"".join(chunks))
    assert [r["seq"] for r in records] == list(range(1, 11))
    assert b"".join(chunks).startswith(whole)  # same records whatever the chunking
    assert records[0]["answers"] and records[1]["final"] and records[5]["payload"]["steps"]


# --- pages and responses ------------------------------------------------------------------------------


def login(client, user):
    assert client.login(username=user.username, password=PASSWORD)


def test_export_page_and_streamed_download(client, setup):
    project, manager, _, items = setup
    login(client, manager)
    page = client.get(reverse("export-page", args=[project.pk]))
    assert page.status_code == 200
    body = page.content.decode()
    for fmt in ("jsonl", "lfm_steps", "lfm_imitation", "csv"):
        assert f'value="{fmt}"' in body

    response = client.get(reverse("export-download", args=[project.pk]), {"format": "csv", "final_only": "1"})
    assert response.status_code == 200
    assert isinstance(response, StreamingHttpResponse)
    assert response["Content-Type"].startswith("text/csv")
    disposition = response["Content-Disposition"]
    assert disposition.startswith('attachment; filename="kitchen-runs-csv-') and disposition.endswith('.csv"')
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0] == CSV_HEADER and len(rows) == 7


def test_bad_download_parameters_answer_400_with_the_reason(client, setup):
    project, manager, _, _ = setup
    login(client, manager)
    url = reverse("export-download", args=[project.pk])
    for params, message in [
        ({"since": "soon"}, "is not a date"),
        ({"format": "parquet"}, "Unknown export format"),
        ({"annotator": "ghost"}, "no user called"),
    ]:
        response = client.get(url, params)
        assert response.status_code == 400
        assert message in response.content.decode()


def test_only_managers_export(client, setup):
    project, _, ann, _ = setup
    login(client, ann)
    assert client.get(reverse("export-page", args=[project.pk])).status_code == 403
    assert client.get(reverse("export-download", args=[project.pk])).status_code == 403


def test_under_asgi_the_download_streams_asynchronously(setup):
    project, manager, _, items = setup

    async def scenario():
        client = AsyncClient()
        await client.aforce_login(manager)
        response = await client.get(reverse("export-download", args=[project.pk]), {"format": "jsonl"})
        assert response.status_code == 200 and response.is_async
        data = b"".join([chunk async for chunk in response.streaming_content])
        await sync_to_async(connections.close_all, thread_sensitive=True)()  # the request thread's connection
        return data

    data = asyncio.run(scenario())
    assert [r["id"] for r in lines(data)] == [i.pk for i in items]


def test_admin_action_streams_one_project(client, setup):
    project = setup[0]
    admin = get_user_model().objects.create_superuser("root", "root@example.com", PASSWORD)
    login(client, admin)
    url = reverse("admin:annotation_project_changelist")
    response = client.post(url, {"action": "export_jsonl", "_selected_action": [project.pk]})
    assert isinstance(response, StreamingHttpResponse)
    assert len(lines(b"".join(response.streaming_content))) == 3

    other = make_project("Another")
    response = client.post(url, {"action": "export_jsonl", "_selected_action": [project.pk, other.pk]}, follow=True)
    assert "Select exactly one project" in response.content.decode()


# --- command line ----------------------------------------------------------------------------------


def test_export_items_command(setup, tmp_path):
    project, _, _, items = setup
    out = io.StringIO()
    call_command("export_items", str(project.pk), "--format", "lfm_imitation", stdout=out)
    assert len(lines(out.getvalue().encode())) == 4
    target = tmp_path / "final.jsonl"
    call_command("export_items", str(project.pk), "--final-only", "-o", str(target), stderr=io.StringIO())
    assert [r["id"] for r in lines(target.read_bytes())] == [items[0].pk, items[1].pk]
    with pytest.raises(CommandError, match="is not a date"):
        call_command("export_items", str(project.pk), "--since", "last week")
    with pytest.raises(CommandError, match="Unknown format"):
        call_command("export_items", str(project.pk), "--format", "yaml")
