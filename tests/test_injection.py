"""Hostile input to every filter, search and ordering parameter of the API and the pages, to path
parameters, file and format names and request bodies: SQL-ish strings, unknown field names for ordering,
path traversal, huge numbers, NUL characters and bytes that are not UTF-8.

Each answers 400 with a message people can act on, or is ignored (the list as without the parameter);
never a 500, and never data from another project or a password hash. Also the input limits: upload size
(IMPORT_MAX_BYTES) through the page, the API and the command line, line length (MAX_LINE_BYTES), JSON
nesting depth (MAX_JSON_DEPTH) in imports and API bodies, and the API body size (DATA_UPLOAD_MAX_MEMORY_SIZE).
"""

import io
import json
from pathlib import Path

import orjson
import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client, override_settings
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotation import importing
from annotation.importing import MAX_JSON_DEPTH, import_path
from annotation.models import Answer, AuditEvent, ImportJob, Item, ItemPayload, Membership, Project, Role

from .factories import PASSWORD, add_member, full_answer, make_items, make_project, make_user, trajectory

pytestmark = pytest.mark.django_db

SQLISH = [
    "' OR 1=1 --",
    "' OR '1'='1",
    "state; DROP TABLE annotation_item; --",
    "open' UNION SELECT username, password FROM auth_user --",
    '") OR ("1"="1',
    "%' OR '%'='",
    "1; SELECT pg_sleep(10)",
]
ORDERINGS = ["-password", "user__password", "payload__data", "seq; DROP TABLE x", "?", "-pk,user__password"]
TRAVERSAL = ["../../../../etc/passwd", "..\\..\\windows\\win.ini", "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
             "/etc/passwd", "....//....//etc/passwd", "file:///etc/passwd"]
HUGE = ["99999999999999999999999999999", "-99999999999999999999", "1e308", "18446744073709551616", "-1", "0"]
ODD = ["\x00", "open\x00", "<script>alert(1)</script>", "{{ 7|add:7 }}", "\u202e\ufeff", "é" * 300]
HOSTILE = SQLISH + ORDERINGS + TRAVERSAL + HUGE + ODD
NOT_UTF8 = ["%FF%FE%FD", "%C3%28", "%ED%A0%80", "%00%FF"]  # raw bytes in the query string

HIDDEN = "hidden-elsewhere"


@pytest.fixture
def world(db):
    """A populated project and its manager; another project (with a marker in it) the manager cannot see."""
    project = make_project("Visible")
    manager = add_member(project, Role.MANAGER, "boss")
    annotator = add_member(project, Role.ANNOTATOR, "anna")
    items = make_items(project, count=3, n_steps=2)
    Answer.objects.create(item=items[0], user=annotator, status=Answer.Status.SUBMITTED,
                          data=full_answer(items[0]), submitted_at=items[0].created_at)
    other = make_project(HIDDEN)
    add_member(other, Role.MANAGER, f"{HIDDEN}-user")
    hidden = make_items(other, count=2, n_steps=2)
    Item.objects.filter(pk__in=[i.pk for i in hidden]).update(external_id=HIDDEN)
    AuditEvent.record(actor=None, verb=HIDDEN, obj=other, project=other)
    token = Token.objects.create(user=manager)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    web = Client()
    assert web.login(username=manager.username, password=PASSWORD)
    return {"project": project, "manager": manager, "items": items, "other": other, "api": api, "web": web}


def body_of(response) -> bytes:
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content)
    return response.content


def check(response, allowed=(200, 400)):
    """Not a server error, an expected status, no data from elsewhere; a 400 says why."""
    body = body_of(response)
    assert response.status_code in allowed, (response.status_code, body[:500])
    assert HIDDEN.encode() not in body
    assert b"md5$" not in body and b"pbkdf2" not in body  # no password hash, whatever the ordering
    if response.status_code == 400 and response.get("Content-Type", "").startswith("application/json"):
        detail = json.loads(body)["detail"]
        assert isinstance(detail, str) and detail
    return body


def api_path(project, rest=""):
    return f"/api/projects/{project.pk}/{rest}"


# --- API list filters ------------------------------------------------------------------------------

LIST_ENDPOINTS = ["items/", "disagreements/", "members/", "imports/", "audit/", "runs/", "versions/"]
# each API list's own filters: a hostile value is refused (400) or matches nothing (200, empty)
API_FILTERS = {"items/": ["state", "external_id"], "audit/": ["verb"], "runs/": ["status"]}
IGNORED = ["ordering", "order_by", "sort", "search", "q", "fields", "page_size", "filter", "where"]


@pytest.mark.parametrize("value", HOSTILE)
def test_api_filters_refuse_or_match_nothing(world, value):
    api, project = world["api"], world["project"]
    for endpoint, names in API_FILTERS.items():
        for name in names:
            r = api.get(api_path(project, endpoint), {name: value})
            check(r)
            if r.status_code == 200:
                assert r.json()["count"] == 0, (endpoint, name, value)
            else:
                assert r.json()["errors"][0]["field"] == name


@pytest.mark.parametrize("value", HOSTILE)
def test_api_unknown_ordering_and_search_parameters_are_ignored(world, value):
    api, project = world["api"], world["project"]
    expected = [i.pk for i in world["items"]]
    if "\x00" in value:  # refused in any parameter (PostgreSQL text cannot hold it)
        r = check(api.get(api_path(project, "items/"), {"ordering": value}), allowed=(400,))
        assert r.startswith(b'{"detail":"ordering: NUL characters')
        return
    for name in IGNORED:
        r = api.get(api_path(project, "items/"), {name: value})
        check(r, allowed=(200,))
        assert [row["id"] for row in r.json()["results"]] == expected, (name, value)
    for endpoint in LIST_ENDPOINTS:
        check(api.get(api_path(project, endpoint), {"ordering": value, "search": value}), allowed=(200,))
    r = api.get("/api/projects/", {"ordering": value, "search": value})
    assert [p["name"] for p in r.json()["results"]] == ["Visible"]


@pytest.mark.parametrize("value", HOSTILE)
def test_api_page_numbers_are_checked(world, value):
    """DRF's paginator: a page that is not a page number in range is a 404 "Invalid page."."""
    api, project = world["api"], world["project"]
    for endpoint in LIST_ENDPOINTS:
        r = api.get(api_path(project, endpoint), {"page": value})
        check(r, allowed=(200, 400, 404))
        assert r.status_code != 400 or "\x00" in value
        if r.status_code == 404:
            assert "Invalid page" in r.json()["detail"]


@pytest.mark.parametrize("raw", NOT_UTF8)
def test_api_query_strings_that_are_not_utf8(world, raw):
    api, project = world["api"], world["project"]
    for name in ["state", "external_id", "ordering", "page", "page_size"]:
        check(api.get(api_path(project, "items/"), QUERY_STRING=f"{name}={raw}"), allowed=(200, 400, 404))
    check(api.get(api_path(project, "audit/"), QUERY_STRING=f"verb={raw}"))
    check(api.get(api_path(project, "runs/"), QUERY_STRING=f"status={raw}"), allowed=(400,))
    for name in ["format", "final_only", "since", "until", "annotator"]:
        check(api.get(api_path(project, "export/"), QUERY_STRING=f"{name}={raw}"), allowed=(400,))


def test_a_nul_character_in_a_filter_is_a_400_on_every_database(world):
    """PostgreSQL cannot hold NUL in text: the filter is refused before it reaches the database."""
    api, project = world["api"], world["project"]
    for endpoint, name in [("items/", "external_id"), ("audit/", "verb"), ("export/", "annotator")]:
        r = check(api.get(api_path(project, endpoint), {name: "a\x00b"}), allowed=(400,))
        assert "NUL" in json.loads(r)["detail"]


# --- API export ------------------------------------------------------------------------------------

DATES = ["9999-12-31", "9999-12-31T23:59:59.999999", "9999-12-31T23:59:59-14:00", "0001-01-01",
         "0001-01-01T00:00:00+14:00", "99999-01-01", "2024-13-45", "2024-02-30", "+002024-01-01", "now()",
         "2024-01-01' OR '1'='1"]


@pytest.mark.parametrize("value", HOSTILE + DATES)
def test_api_export_filters(world, value):
    api, project = world["api"], world["project"]
    r = api.get(api_path(project, "export/"), {"format": value})
    check(r, allowed=(400,))
    assert r.json()["errors"][0]["field"] == "format"
    check(api.get(api_path(project, "export/"), {"final_only": value}), allowed=(200,) if value in "01" else (400,))
    check(api.get(api_path(project, "export/"), {"annotator": value}), allowed=(400,))
    for name in ["since", "until"]:
        r = api.get(api_path(project, "export/"), {name: value})
        body = check(r)
        for line in body.splitlines() if r.status_code == 200 else []:
            assert orjson.loads(line)["id"] in {i.pk for i in world["items"]}


def test_api_export_dates_at_the_ends_of_the_calendar(world):
    api, project = world["api"], world["project"]
    for params in [{"until": "9999-12-30"}, {"since": "0001-01-02"}, {"since": "0001-01-01", "until": "9999-12-30"},
                   {"until": "9999-12-31T23:59:59.999998+00:00"}]:
        body = check(api.get(api_path(project, "export/"), params), allowed=(200,))
        assert len(body.splitlines()) == 1  # the one item with an answer
    assert check(api.get(api_path(project, "export/"), {"since": "9999-12-31"}), allowed=(200,)) == b""
    for params in [{"until": "9999-12-31"}, {"until": "9999-12-31T23:59:59.999999"},
                   {"since": "0001-01-01T00:00:00+14:00"}, {"until": "9999-12-31T20:00:00-14:00"}]:
        r = check(api.get(api_path(project, "export/"), params), allowed=(400,))
        assert "is out of range; use a date from 0001-01-02 to 9999-12-30" in json.loads(r)["detail"]


# --- API path parameters and bodies ----------------------------------------------------------------


@pytest.mark.parametrize("number", ["99999999999999999999999", "9223372036854775808", "2147483648", "0"])
def test_api_huge_ids_in_the_path_are_404(world, number):
    api, project, item = world["api"], world["project"], world["items"][0]
    paths = [f"/api/projects/{number}/", f"/api/projects/{number}/items/",
             api_path(project, f"items/{number}/"), api_path(project, f"members/{number}/"),
             api_path(project, f"imports/{number}/"), api_path(project, f"runs/{number}/"),
             api_path(project, f"versions/{number}/")]
    for path in paths:
        check(api.get(path), allowed=(404,))
    for path in [api_path(project, f"items/{number}/answer/"), api_path(project, f"answers/{number}/review/"),
                 api_path(project, f"items/{number}/adjudicate/"), api_path(project, f"items/{number}/skip/")]:
        check(api.post(path, {"decision": "accept", "data": {}}, format="json"), allowed=(404,))
    assert api.get(api_path(project, f"items/{item.pk}/")).status_code == 200


@pytest.mark.parametrize("name", TRAVERSAL + ["..", "lfm_trajectory/../../x", "lfm_trajectory%00", "%FF%FE",
                                                "lfm_trajectory%C3%28"])
def test_api_kind_names_with_traversal_are_404(world, name):
    check(world["api"].get(f"/api/kinds/{name}/"), allowed=(404,))


@pytest.mark.parametrize("value", SQLISH + ["-password", "user__password"])
def test_api_bodies_with_sqlish_strings(world, value):
    api, project = world["api"], world["project"]
    r = check(APIClient().post("/api/auth/token/", {"username": value, "password": value}, format="json"),
              allowed=(400,))
    r = check(api.post(api_path(project, "members/"), {"username": value, "role": "viewer"}, format="json"),
              allowed=(400,))
    r = check(api.patch(api_path(project), {value: 1}, format="json"), allowed=(400,))
    assert json.loads(r)["errors"][0]["field"] == value
    r = check(api.patch(api_path(project), {"description": value}, format="json"), allowed=(200,))
    assert Project.objects.get(pk=project.pk).description == value  # stored as given, not executed
    assert Membership.objects.filter(project=project).count() == 2


@pytest.mark.parametrize("number", [10**30, 2**64, 2**63, 2**31, -1, 1e308, "99999999999999999999", 1.5])
def test_api_huge_numbers_in_bodies_are_400_or_clamped(world, number):
    api, project, item = world["api"], world["project"], world["items"][1]
    for field in ["answers_per_item", "lease_minutes"]:
        r = check(api.patch(api_path(project), {field: number}, format="json"), allowed=(400,))
        assert json.loads(r)["errors"][0]["field"] == field
    body = {"data": full_answer(item), "time_spent_ms": number}
    r = api.post(api_path(project, f"items/{item.pk}/answer/"), body, format="json")
    check(r, allowed=(400, 201))
    if r.status_code == 400:  # not an integer (orjson reads integers past 64 bits as floats) or negative
        assert r.json()["errors"][0]["field"] == "time_spent_ms"
        assert not Answer.objects.filter(item=item).exists()
    else:  # time spent is capped at a day
        assert Answer.objects.get(item=item).time_spent_ms == r.json()["time_spent_ms"] == 24 * 3600 * 1000


def test_api_body_that_is_not_utf8_or_not_json_is_400(world):
    api, project = world["api"], world["project"]
    for raw in [b'{"description": "\xff\xfe"}', b"\xef\xbb\xbf{}", b"{'a': 1}", b'{"a": NaN}', b"[" * 5000,
                b'{"a": 1e999}']:
        r = check(api.generic("PATCH", api_path(project), raw, content_type="application/json"), allowed=(400,))
        assert "JSON parse error" in json.loads(r)["detail"]


# --- pages -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", HOSTILE)
def test_page_filters_are_ignored_or_refused(world, value):
    web, project = world["web"], world["project"]
    pid = project.pk
    for name in ["state", "page", "ordering", "search", "sort"]:
        body = check(web.get(reverse("item-list", args=[pid]), {name: value}), allowed=(200,))
        assert all(i.external_id.encode() in body for i in world["items"]) or name == "page"
    for name in ["verb", "page"]:
        check(web.get(reverse("project-audit", args=[pid]), {name: value}), allowed=(200,))
    check(web.get(reverse("disagreement-list", args=[pid]), {"page": value}), allowed=(200,))
    check(web.get(reverse("export-page", args=[pid]), {"format": value, "since": value}), allowed=(200,))
    for name in ["format", "final_only", "annotator"]:
        valid = name == "final_only" and value in ("0", "-1"[:0])
        body = check(web.get(reverse("export-download", args=[pid]), {name: value}),
                     allowed=(200,) if valid else (400,))
        assert valid or b"Unknown export format" in body or b"final_only: " in body or b"annotator: " in body
    for name in ["since", "until"]:
        check(web.get(reverse("export-download", args=[pid]), {name: value}))
    check(web.get(reverse("project-list"), {"page": value, "ordering": value}), allowed=(200,))


@pytest.mark.parametrize("raw", NOT_UTF8)
def test_page_query_strings_that_are_not_utf8(world, raw):
    web, pid = world["web"], world["project"].pk
    for name in ["state", "page", "ordering"]:
        check(web.get(reverse("item-list", args=[pid]), QUERY_STRING=f"{name}={raw}"), allowed=(200,))
    check(web.get(reverse("project-audit", args=[pid]), QUERY_STRING=f"verb={raw}"), allowed=(200,))
    for name in ["format", "final_only", "since", "until", "annotator"]:
        check(web.get(reverse("export-download", args=[pid]), QUERY_STRING=f"{name}={raw}"), allowed=(400,))


def test_page_nul_characters_in_filters(world):
    web, pid = world["web"], world["project"].pk
    check(web.get(reverse("project-audit", args=[pid]), {"verb": "a\x00b"}), allowed=(200, 400))
    check(web.get(reverse("export-download", args=[pid]), {"annotator": "a\x00b"}), allowed=(400,))
    check(web.get(reverse("item-list", args=[pid]), {"state": "open\x00"}), allowed=(200,))


@pytest.mark.parametrize("number", ["99999999999999999999999", "9223372036854775808", "2147483648"])
def test_page_huge_ids_in_the_path_are_404(world, number):
    web, pid = world["web"], world["project"].pk
    for path in [f"/projects/{number}/", f"/projects/{number}/items/", f"/projects/{pid}/items/{number}/",
                 f"/projects/{pid}/imports/{number}/", f"/projects/{pid}/review/{number}/",
                 f"/projects/{pid}/disagreements/{number}/"]:
        check(web.get(path), allowed=(404,))


# --- file and format names -----------------------------------------------------------------------------


def _uploads() -> set:
    d = Path(settings.IMPORT_DIR)
    return set(d.iterdir()) if d.exists() else set()


def multipart(filename: str, data: bytes, **fields) -> tuple[bytes, str]:
    """A multipart body with the file name exactly as given (test clients clean names up first)."""
    boundary = "----hostile-boundary-7MA4YWxk"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                 f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize("name", TRAVERSAL + ["../../x.jsonl", "a/b/c.jsonl", "..", "x\x00.jsonl", "/", "~root/.ssh/x"])
def test_upload_filenames_cannot_choose_where_the_file_goes(world, name):
    api, web, project = world["api"], world["web"], world["project"]
    body, content_type = multipart(name, orjson.dumps(trajectory(1)) + b"\n")
    r = api.generic("POST", api_path(project, "imports/"), body, content_type=content_type)
    check(r, allowed=(202, 400))
    if r.status_code == 400:  # Django drops a file whose name is nothing but a path
        assert r.json()["errors"][0]["field"] == "file"
    r = web.generic("POST", reverse("import-list", args=[project.pk]), body, content_type=content_type)
    check(r, allowed=(302, 400))
    for job in ImportJob.objects.filter(project=project):
        assert "/" not in job.filename and "\\" not in job.filename and job.filename not in ("", ".", "..")
        stored = importing.job_file(job)
        assert importing._is_upload(stored) and stored.parent == Path(settings.IMPORT_DIR)
        assert stored.name != Path(name).name  # a name of its own (random), not the client's


@pytest.mark.parametrize("fmt", TRAVERSAL + SQLISH + ["json\x00", "JSONL" * 10])
def test_import_format_names_are_checked(world, fmt, tmp_path):
    api, web, project = world["api"], world["web"], world["project"]
    data = orjson.dumps(trajectory(1)) + b"\n"
    before = _uploads()
    r = check(api.post(api_path(project, "imports/"), {"file": SimpleUploadedFile("a.jsonl", data), "format": fmt},
                       format="multipart"), allowed=(400,))
    assert json.loads(r)["errors"][0]["field"] in ("format", "file")
    r = check(web.post(reverse("import-list", args=[project.pk]),
                       {"file": SimpleUploadedFile("a.jsonl", data), "format": fmt}), allowed=(400,))
    path = tmp_path / "a.jsonl"
    path.write_bytes(data)
    with pytest.raises(CommandError, match="Unknown import format"):
        call_command("import_items", project.pk, str(path), format=fmt)
    assert not ImportJob.objects.exists()
    assert _uploads() == before


# --- limits: upload size ------------------------------------------------------------------------------------


def test_upload_size_limit_on_the_page(world):
    web, project = world["web"], world["project"]
    before = _uploads()
    with override_settings(IMPORT_MAX_BYTES=1000):
        r = web.post(reverse("import-list", args=[project.pk]),
                     {"file": SimpleUploadedFile("big.jsonl", b"x" * 5000)})
    assert r.status_code == 400 and "larger than the import limit of 1000 bytes" in r.content.decode()
    assert not ImportJob.objects.exists() and _uploads() == before


def test_upload_size_limit_on_the_api(world):
    api, project = world["api"], world["project"]
    before = _uploads()
    with override_settings(IMPORT_MAX_BYTES=1000):
        r = api.post(api_path(project, "imports/"), {"file": SimpleUploadedFile("big.jsonl", b"x" * 5000)},
                     format="multipart")
        assert r.wsgi_request.import_upload_too_big  # stopped while streaming in, not after
        ok = api.post(api_path(project, "imports/"),
                      {"file": SimpleUploadedFile("ok.jsonl", orjson.dumps(trajectory(1)) + b"\n")},
                      format="multipart")
    assert r.status_code == 400
    assert "larger than the import limit of 1000 bytes" in r.json()["detail"]
    assert r.json()["errors"] == [{"field": "file", "message": r.json()["detail"]}]
    assert ok.status_code == 202
    assert ImportJob.objects.count() == 1 and len(_uploads() - before) == 1


def test_upload_size_limit_on_the_command_line(world, tmp_path):
    project = world["project"]
    path = tmp_path / "big.jsonl"
    path.write_bytes(orjson.dumps(trajectory(1)) + b"\n" + b" " * 2000)
    with override_settings(IMPORT_MAX_BYTES=1000):
        with pytest.raises(CommandError, match="larger than the import limit of 1000 bytes"):
            call_command("import_items", project.pk, str(path))
    assert not ImportJob.objects.exists()
    assert Item.objects.filter(project=project).count() == 3


# --- limits: line length and nesting depth in imports ----------------------------------------------------------


def nested(depth: int, leaf="x"):
    """`depth` arrays and objects inside each other (alternating), around `leaf`."""
    value = leaf
    for i in range(depth):
        value = {"k": value} if i % 2 else [value]
    return value


def test_an_import_line_over_the_length_limit_fails_the_file(world, tmp_path, monkeypatch):
    monkeypatch.setattr(importing, "MAX_LINE_BYTES", 2048)
    project = world["project"]
    long = trajectory(1)
    long["steps"][0]["observation"] = "x" * 5000
    path = tmp_path / "long.jsonl"
    path.write_bytes(b"".join(orjson.dumps(v) + b"\n" for v in [trajectory(1), long, trajectory(1)]))
    job = import_path(project, None, path)
    assert job.status == ImportJob.Status.FAILED
    assert job.errors == [{"line": 2, "field": "(line)", "message": "the line is longer than 2.0 KiB"}]
    assert Item.objects.filter(project=project).count() == 3  # nothing of the file was kept


def test_an_import_line_nested_too_deep_is_an_error_naming_line_and_field(world, tmp_path):
    project = world["project"]
    ok = trajectory(1)
    ok["meta"] = {"deep": nested(MAX_JSON_DEPTH - 2)}  # the line itself and meta are two levels
    deep = trajectory(1)
    deep["meta"] = {"deep": nested(MAX_JSON_DEPTH - 1)}
    path = tmp_path / "deep.jsonl"
    path.write_bytes(b"".join(orjson.dumps(v) + b"\n" for v in [ok, deep, trajectory(1)]))
    job = import_path(project, None, path)
    assert job.status == ImportJob.Status.FAILED
    assert [e["line"] for e in job.errors] == [2]
    error = job.errors[0]
    assert error["field"].startswith("meta.deep.0.k.0.k") and "more)" in error["field"]
    assert f"nested deeper than {MAX_JSON_DEPTH} levels" in error["message"]
    assert Item.objects.filter(project=project).count() == 3 and ItemPayload.objects.count() == 5

    path.write_bytes(orjson.dumps(ok) + b"\n")
    assert import_path(project, None, path).status == ImportJob.Status.SUCCEEDED


def test_deep_nesting_in_a_json_document_and_past_orjsons_own_limit(world, tmp_path):
    project = world["project"]
    deep = trajectory(1)
    deep["meta"] = nested(300)
    path = tmp_path / "doc.json"
    path.write_bytes(orjson.dumps([trajectory(1), trajectory(1)])[:-1] + b"," + json.dumps(deep).encode() + b"]")
    job = import_path(project, None, path, "json")
    assert job.status == ImportJob.Status.FAILED
    assert [(e["line"], e["field"][:8]) for e in job.errors] == [(3, "meta.k.0")]

    path = tmp_path / "very.jsonl"
    path.write_bytes(orjson.dumps(trajectory(1)) + b"\n" + b"[" * 3000 + b"]" * 3000 + b"\n")
    job = import_path(project, None, path)
    assert job.status == ImportJob.Status.FAILED
    assert job.errors[0]["line"] == 2 and job.errors[0]["field"] == "(json)"
    assert "depth limit exceeded" in job.errors[0]["message"]  # orjson's own limit, 1024
    assert Item.objects.filter(project=project).count() == 3


# --- limits: API bodies ---------------------------------------------------------------------------------------


def test_an_api_body_nested_too_deep_is_400_naming_the_field(world):
    api, project, item = world["api"], world["project"], world["items"][1]
    answer = full_answer(item)
    answer["extra"] = nested(MAX_JSON_DEPTH)
    r = api.post(api_path(project, f"items/{item.pk}/answer/"), {"data": answer}, format="json")
    assert r.status_code == 400
    error = r.json()["errors"][0]
    assert error["field"] == "data.extra.k.0.k.0.k.0.… (56 more)"
    assert f"deeper than {MAX_JSON_DEPTH} levels" in error["message"]
    assert r.json()["detail"].startswith("data.extra.k.0.k")
    assert not Answer.objects.filter(item=item).exists()
    # at the limit it is the kind that answers (an unknown key), not the depth check
    answer["extra"] = nested(MAX_JSON_DEPTH - 2)
    r = api.post(api_path(project, f"items/{item.pk}/answer/"), {"data": answer}, format="json")
    assert r.status_code == 400 and "deeper" not in r.json()["detail"]
    # far past the standard library's recursion limit: still a clear 400
    raw = b'{"data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = api.generic("POST", api_path(project, f"items/{item.pk}/answer/"), raw, content_type="application/json")
    assert r.status_code == 400 and "JSON parse error" in r.json()["detail"]


def test_an_api_body_over_the_size_limit_is_413(world):
    api, project = world["api"], world["project"]
    with override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1000):
        r = api.patch(api_path(project), {"description": "x" * 2000}, format="json")
        assert r.status_code == 413
        assert "larger than 1000 bytes" in r.json()["detail"] and r.json()["errors"]
        r = api.patch(api_path(project), {"description": "x" * 2000})  # a multipart body, same limit
        assert r.status_code == 413 and r.json()["detail"].startswith("The request body is larger")
        r = api.generic("PATCH", api_path(project), "description=" + "x" * 2000,
                        content_type="application/x-www-form-urlencoded")
        assert r.status_code == 413
        r = APIClient().post("/api/auth/token/", {"username": "x" * 2000, "password": "p"}, format="json")
        assert r.status_code == 413
        assert api.patch(api_path(project), {"description": "small"}, format="json").status_code == 200
    with override_settings(DATA_UPLOAD_MAX_NUMBER_FIELDS=10):
        r = api.generic("PATCH", api_path(project), "&".join(f"f{i}=1" for i in range(20)),
                        content_type="application/x-www-form-urlencoded")
        assert r.status_code == 400 and "more than 10 fields" in r.json()["detail"]
    assert Project.objects.get(pk=project.pk).description == "small"


def test_an_api_body_longer_than_its_content_length_says_is_cut_at_the_limit(world):
    """A client that under-declares Content-Length still cannot make the parser read past the limit."""
    from annotation.api.parsers import BodyTooLarge, read_body

    with override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=100):
        class Req:
            META = {"CONTENT_LENGTH": "10"}

        with pytest.raises(BodyTooLarge):
            read_body(io.BytesIO(b"x" * 500), {"request": Req()})
        assert read_body(io.BytesIO(b"x" * 100), {"request": Req()}) == b"x" * 100


def test_a_staff_project_name_with_sql_is_stored_verbatim(world):
    staff = make_user("staffer", is_staff=True)
    api = APIClient()
    api.force_authenticate(staff)
    name = "x'); DROP TABLE annotation_project; --"
    r = api.post("/api/projects/", {"name": name, "kind": "lfm_trajectory"}, format="json")
    assert r.status_code == 201 and r.json()["name"] == name
    assert Project.objects.filter(name=name).count() == 1 and Project.objects.count() == 3
    r = api.post("/api/projects/", {"name": "y", "kind": "../../etc/passwd"}, format="json")
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "kind"
