"""What survives a failure: real processes killed or stopped while clients work.

- a web server killed with SIGKILL in the middle of a submit: every answer is stored whole or not at
  all, and retrying what was not acknowledged stores each answer exactly once;
- PostgreSQL restarted during a stream of submits: clients get 503 + Retry-After (JSON for the API, a short
  page for pages), never a 500, and carry on by themselves once it is back; nothing acknowledged is lost;
- Redis gone: pages render, submits work, the dashboard's polling endpoint answers;
- a database error in a view (simulated): 503 + Retry-After.

The server is `manage.py serve --workers 0` (uvicorn) in a child process on a free port, against the test
database (DATABASE_NAME_OVERRIDE, as in tests/test_training_faults.py). A killed training worker is in
tests/test_training_faults.py; the dashboard falling back to polling in a browser is in
tests/browser/test_redis_down_browser.py.
"""

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import pytest
from django.conf import settings
from django.db import OperationalError, close_old_connections, connection
from django.test import Client
from rest_framework.authtoken.models import Token

from annotation.models import Answer, AuditEvent, Final, Item, Lease, Role

from .factories import add_member, make_items, make_project, wait_until

pytestmark = [pytest.mark.fault]

NET_ERRORS = (OSError, http.client.HTTPException)

# The server process: `manage.py serve` with an optional hook that holds each submit inside its
# transaction (after the answer row, the item's count, the lease and the audit row are written, before
# the final label and the commit), with a marker file "<item>-<user>" while it holds it.
SERVER = r"""
import os, sys, time
import django

django.setup()
delay = float(os.environ.get("FAULT_SUBMIT_DELAY_S") or 0)
if delay:
    from annotation import answers

    original = answers.resolve_final
    markers = os.environ["FAULT_MARKERS"]

    def held_resolve_final(item, **kwargs):
        user_id = item.answers.order_by("-pk").values_list("user_id", flat=True).first()
        marker = os.path.join(markers, f"{item.pk}-{user_id}")
        open(marker, "w").close()
        time.sleep(delay)
        result = original(item, **kwargs)
        os.remove(marker)
        return result

    answers.resolve_final = held_resolve_final
from django.core.management import call_command

call_command("serve", host="127.0.0.1", port=int(sys.argv[1]), workers=0)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Reply:
    status: int
    headers: object
    body: bytes

    def json(self):
        return json.loads(self.body)


def call(method, url, *, token=None, body=None, headers=None, timeout=20) -> Reply:
    """One HTTP request; a non-2xx status is a Reply, a broken connection raises (NET_ERRORS)."""
    hdrs = dict(headers or {})
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        hdrs["Content-Type"] = "application/json"
    if token:
        hdrs["Authorization"] = f"Token {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return Reply(r.status, r.headers, r.read())
    except urllib.error.HTTPError as e:
        return Reply(e.code, e.headers, e.read())


class Server:
    """`manage.py serve --workers 0` in a child process, on the test database."""

    def __init__(self, tmp_path: Path, **env):
        self.tmp = tmp_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.markers = tmp_path / "held"
        self.markers.mkdir(exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "feedback_app.settings_test",
            "DATABASE_NAME_OVERRIDE": str(connection.settings_dict["NAME"]),
            "DATA_DIR": str(tmp_path / "data"),
            "DEBUG": "0",
            "SECRET_KEY": settings.SECRET_KEY,  # the sessions the test makes must be valid there
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "SECURE_COOKIES": "0",
            "FAULT_MARKERS": str(self.markers),
            "PYTHONUNBUFFERED": "1",
            "WEB_PROCESSES": "1",  # requests run in this process: the submit hook must be where they run
            **env,
        }

    def start(self, **env) -> "Server":
        self.starts += 1
        log = open(self.tmp / f"server{self.starts}.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, str(self.port)], cwd=settings.BASE_DIR,
                                     env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT)
        log.close()

        def ready():
            assert self.proc.poll() is None, f"the server exited with {self.proc.returncode}\n{self.logs()}"
            try:
                return call("GET", f"{self.url}/accounts/login/", timeout=2).status == 200
            except NET_ERRORS:
                return False

        wait_until("the server to answer", ready, 60, interval=0.2, logs=self.logs)
        return self

    def held(self) -> set[tuple[int, int]]:
        """(item, user) of the submits held inside their transaction now."""
        return {tuple(map(int, p.name.split("-"))) for p in self.markers.iterdir()}

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        assert self.proc.returncode == -signal.SIGKILL

    def stop(self) -> None:
        """SIGTERM, as a deploy stops it (its web processes and workers with it), then SIGKILL."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-4000:] for p in sorted(self.tmp.glob("server*.log")))


@pytest.fixture
def servers(tmp_path):
    started: list[Server] = []

    def make(**env) -> Server:
        server = Server(tmp_path, **env)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


# --- clients --------------------------------------------------------------------


@dataclass
class Submit:
    user: str
    item_id: int
    body: dict
    status: int | None = None  # None: no answer came back (connection broken)
    next_item: dict | None = None  # what a submit with ?next=1 brought

    @property
    def acknowledged(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass
class Annotator:
    """Takes the next item and submits an answer to it, over and over, through the API."""

    base: str
    project_id: int
    username: str
    token: str
    retry_unavailable: bool = False  # on 503 or a broken connection: wait a moment and send it again
    one_call: bool = False  # submit with ?next=1: the reply brings the next item
    submits: list[Submit] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)  # every non-2xx reply
    finished: bool = False
    error: str = ""

    def _send(self, method, path, body=None) -> Reply | None:
        while True:
            try:
                reply = call(method, self.base + path, token=self.token, body=body)
            except NET_ERRORS:
                if not self.retry_unavailable:
                    return None
                time.sleep(0.2)
                continue
            if not 200 <= reply.status < 300:
                self.replies.append(reply)
            if reply.status == 503 and self.retry_unavailable:
                time.sleep(0.2)  # Retry-After says 5 s; a test need not wait that long
                continue
            return reply

    def answer_body(self, item: dict) -> dict:
        steps = [{"step": i, "verdict": "agree"} for i in range(item["step_count"])]
        return {"data": {"steps": steps, "notes": f"checked by {self.username}"}, "time_spent_ms": 1000,
                "draft": False}

    def submit(self, submit: Submit) -> Submit:
        query = "?next=1" if self.one_call else ""
        reply = self._send("POST", f"/api/projects/{self.project_id}/items/{submit.item_id}/answer/{query}",
                           submit.body)
        submit.status = None if reply is None else reply.status
        submit.next_item = reply.json().get("next_item") if submit.acknowledged and self.one_call else None
        return submit

    def run(self, stop: threading.Event | None = None) -> None:
        self.finished = False
        item = None  # with one_call: the item the last submit brought
        try:
            while stop is None or not stop.is_set():
                if item is None:
                    reply = self._send("POST", f"/api/projects/{self.project_id}/next/")
                    if reply is None:
                        return
                    if reply.status == 204:
                        self.finished = True
                        return
                    if reply.status != 200:
                        self.error = f"next: {reply.status} {reply.body[:300]!r}"
                        return
                    item = reply.json()
                submit = Submit(self.username, item["id"], self.answer_body(item))
                self.submits.append(submit)
                self.submit(submit)
                if submit.status is None:
                    return
                if not submit.acknowledged:
                    self.error = f"submit: {submit.status}"
                    return
                item = submit.next_item
                if self.one_call and item is None:
                    self.finished = True
                    return
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = repr(exc)


def annotators(project, base, count, **kw) -> list[Annotator]:
    out = []
    for i in range(count):
        user = add_member(project, Role.ANNOTATOR, f"annotator{i + 1}")
        out.append(Annotator(base, project.pk, user.username, Token.objects.create(user=user).key, **kw))
    return out


def start_all(clients, stop=None) -> list[threading.Thread]:
    threads = [threading.Thread(target=c.run, args=(stop,), daemon=True) for c in clients]
    for t in threads:
        t.start()
    return threads


def join_all(threads, timeout) -> None:
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a client is still running"


def run_to_the_end(clients, rounds=5) -> None:
    """Run the clients until a round stores nothing new. On PostgreSQL `next` skips items whose row a
    concurrent submit holds locked, so a client may hear "nothing left" (204) while one is still open."""
    for _ in range(rounds):
        before = Answer.objects.count()
        join_all(start_all(clients), 60)
        assert all(c.finished and not c.error for c in clients), [c.error for c in clients]
        if Answer.objects.count() == before:
            return


# --- database checks ------------------------------------------------------------------


def assert_consistent(project) -> dict[int, int]:
    """Every item's effects match its stored answers: nothing half-written. Returns answers per item."""
    n = project.answers_per_item
    counts = {}
    for item in Item.objects.filter(project=project).order_by("pk"):
        stored = list(Answer.objects.filter(item=item).values_list("user_id", "status"))
        submitted = [u for u, status in stored if status == Answer.Status.SUBMITTED]
        assert len(submitted) == len(stored), f"item {item.pk}: an answer that is not submitted: {stored}"
        assert len(set(submitted)) == len(submitted), f"item {item.pk}: one user answered twice"
        assert item.answer_count == len(submitted), f"item {item.pk}: count {item.answer_count}, rows {submitted}"
        assert item.answer_count <= n, f"item {item.pk} has {item.answer_count} answers of {n}"
        has_final = Final.objects.filter(item=item).exists()
        # every answer agrees on every step: the final label exists exactly when the item is complete
        assert has_final == (item.answer_count >= n), f"item {item.pk}: final {has_final}, {item.answer_count}/{n}"
        assert item.state == (Item.State.FINAL if has_final else Item.State.OPEN), f"item {item.pk}: {item.state}"
        assert not Lease.objects.filter(item=item, user_id__in=submitted).exists(), f"item {item.pk}: stale lease"
        counts[item.pk] = item.answer_count
    answers = Answer.objects.filter(item__project=project).count()
    assert AuditEvent.objects.filter(project=project, verb="answer.submitted").count() == answers
    return counts


def stored(submit: Submit) -> bool:
    """The submitted answer is in the database (as the kind cleaned it: compare what was sent)."""
    answer = Answer.objects.filter(item_id=submit.item_id, user__username=submit.user,
                                   status=Answer.Status.SUBMITTED).first()
    if answer is None:
        return False
    sent = submit.body["data"]
    verdicts = [(s["step"], s["verdict"]) for s in answer.data["steps"]]
    return answer.data["notes"] == sent["notes"] and verdicts == [(s["step"], s["verdict"]) for s in sent["steps"]]


# --- a web server killed during submits ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.django_db(transaction=True)
def test_a_server_killed_during_submits_keeps_each_answer_whole_or_not_at_all(servers):
    project = make_project(answers_per_item=2, retrain_every=0)
    make_items(project, count=10, n_steps=3)
    server = servers(FAULT_SUBMIT_DELAY_S="0.4").start()
    clients = annotators(project, server.url, 3)
    threads = start_all(clients)

    # Kill once a few answers were acknowledged and the server holds another inside its transaction.
    acked = lambda: sum(s.acknowledged for c in clients for s in c.submits)  # noqa: E731
    wait_until("acknowledged submits", lambda: acked() >= 4, 60, logs=server.logs)
    wait_until("a submit inside its transaction", server.held, 30, interval=0.005, logs=server.logs)
    server.kill9()
    held = server.held()
    join_all(threads, 30)
    assert not any(c.error for c in clients), ([c.error for c in clients], server.logs())

    submits = [s for c in clients for s in c.submits]
    lost = [s for s in submits if not s.acknowledged]
    assert held and all(any(s.item_id == item for s in lost) for item, _ in held), "a held submit was acknowledged"
    assert all(s.status is None for s in lost), [s.status for s in lost]
    close_old_connections()
    assert_consistent(project)
    assert all(stored(s) for s in submits if s.acknowledged), "an acknowledged answer is missing"
    for item, user in held:
        assert not Answer.objects.filter(item_id=item, user_id=user).exists(), "a killed transaction was stored"

    # Restarted, the server takes every submit that got no answer again: each is stored exactly once.
    server.start(FAULT_SUBMIT_DELAY_S="0")
    by_user = {c.username: c for c in clients}
    for s in lost:
        was_stored = stored(s)
        by_user[s.user].submit(s)
        assert s.status == (200 if was_stored else 201), (s, server.logs())
    assert all(stored(s) for s in submits)
    assert_consistent(project)

    # The clients go on to the end: every item gets exactly N answers.
    run_to_the_end(clients)
    counts = assert_consistent(project)
    assert set(counts.values()) == {2}
    assert Answer.objects.filter(item__project=project).count() == 2 * len(counts)


# --- PostgreSQL restarted during submits -----------------------------------------------------------


def _pg_cluster() -> tuple[str, str]:
    versions = sorted(os.listdir("/etc/postgresql"), key=lambda v: [int(p) for p in v.split(".") if p.isdigit()])
    return os.environ.get("PG_CLUSTER_VERSION", versions[-1]), os.environ.get("PG_CLUSTER_NAME", "main")


def pg_ctl(action: str, *options: str) -> subprocess.CompletedProcess:
    version, name = _pg_cluster()
    return subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", *options, version, name, action],
                          capture_output=True, text=True, timeout=60)


def pg_running() -> bool:
    return pg_ctl("status").returncode == 0


def ensure_pg_running() -> None:
    """Start the cluster if it is down and wait until this process can query it again."""
    if not pg_running():
        result = pg_ctl("start")
        assert result.returncode == 0 or pg_running(), result.stderr

    def usable():
        connection.close()
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            return True
        except Exception:  # noqa: BLE001 - still starting
            return False

    wait_until("PostgreSQL to accept connections again", usable, 60, interval=0.3)


def _skip_unless_restartable_postgres():
    if connection.vendor != "postgresql":
        pytest.skip("restarts PostgreSQL: runs when DATABASE_URL is PostgreSQL")
    if not shutil.which("pg_ctlcluster") or not os.path.isdir("/etc/postgresql") or os.geteuid() != 0:
        pytest.skip("needs a local PostgreSQL cluster managed by pg_ctlcluster, and root")
    host = connection.settings_dict.get("HOST") or "localhost"
    if host not in {"localhost", "127.0.0.1", "::1", ""}:
        pytest.skip(f"PostgreSQL at {host} is not this machine's")


def session_id(user) -> str:
    """A logged-in session of `user`, stored in the database the server reads."""
    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def session_cookie(user) -> str:
    return f"{settings.SESSION_COOKIE_NAME}={session_id(user)}"


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(240)
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("one_call", [False, True], ids=["next-then-submit", "submit-brings-next"])
def test_postgres_restarted_during_submits_answers_503_and_recovers(servers, one_call):
    """Clients that honour 503 carry on once the database is back, and every acknowledged answer is
    stored. With ?next=1 a 503 may come after the answer was committed, when the claim failed: the same
    submit sent again stores nothing new and brings the next item."""
    _skip_unless_restartable_postgres()
    project = make_project(answers_per_item=2, retrain_every=0)
    make_items(project, count=8, n_steps=3)
    viewer = add_member(project, Role.VIEWER, "watcher")
    cookie = session_cookie(viewer)
    server = servers(FAULT_SUBMIT_DELAY_S="0.05").start()
    clients = annotators(project, server.url, 3, retry_unavailable=True, one_call=one_call)

    pages: list[Reply] = []
    stop_probing = threading.Event()

    def probe_pages():
        while not stop_probing.is_set():
            for path in (f"/projects/{project.pk}/", f"/projects/{project.pk}/stats/"):
                try:
                    pages.append(call("GET", server.url + path, headers={"Cookie": cookie, "Accept": "text/html"},
                                      timeout=10))
                except NET_ERRORS:
                    pass
            time.sleep(0.1)

    prober = threading.Thread(target=probe_pages, daemon=True)
    threads = start_all(clients)
    prober.start()
    acked = lambda: sum(s.acknowledged for c in clients for s in c.submits)  # noqa: E731
    api_503 = lambda: [r for c in clients for r in c.replies if r.status == 503]  # noqa: E731
    page_503 = lambda: [r for r in pages if r.status == 503]  # noqa: E731
    try:
        wait_until("acknowledged submits", lambda: acked() >= 4, 60, logs=server.logs)
        stopped = pg_ctl("stop", "--mode", "fast")
        assert stopped.returncode == 0, stopped.stderr
        wait_until("503s from the API and from pages", lambda: api_503() and page_503(), 45, logs=server.logs)
        acked_while_down = acked()
        time.sleep(0.5)
        assert acked() == acked_while_down, "a submit was acknowledged while the database was down"
    finally:
        ensure_pg_running()  # whatever happened: other tests and the rest of this one need it

    try:
        join_all(threads, 90)
    finally:
        stop_probing.set()
        prober.join(15)
    close_old_connections()

    replies = [r for c in clients for r in c.replies] + pages
    assert not [r for r in replies if r.status >= 500 and r.status != 503], \
        [(r.status, r.body[:500]) for r in replies if r.status >= 500 and r.status != 503]
    for reply in api_503():
        assert reply.headers["Retry-After"] == "5"
        assert reply.headers["Content-Type"].startswith("application/json")
        assert set(reply.json()) == {"detail"} and "database" in reply.json()["detail"]
    for reply in page_503():
        assert reply.headers["Retry-After"] == "5"
        assert reply.headers["Content-Type"].startswith("text/html")
        assert b"Temporarily unavailable" in reply.body and b"Traceback" not in reply.body
        assert len(reply.body) < 1000
    # the clients carried on by themselves once the database was back, to the end of the queue
    assert all(c.finished and not c.error for c in clients), [c.error for c in clients]
    submits = [s for c in clients for s in c.submits]
    assert all(s.acknowledged for s in submits)
    assert all(stored(s) for s in submits), "an acknowledged answer is missing"
    assert_consistent(project)
    run_to_the_end(clients)
    counts = assert_consistent(project)
    assert set(counts.values()) == {2}
    assert pages[-1].status == 200


# --- Redis gone ---------------------------------------------------------------------------------


class PrivateRedis:
    """A redis-server of this test's own, on a free port (never the shared one)."""

    def __init__(self, tmp_path: Path):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def up():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        wait_until("redis-server to start", up, 15, interval=0.1)

    def kill9(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@pytest.fixture
def private_redis(tmp_path):
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    redis = PrivateRedis(tmp_path)
    yield redis
    redis.kill9()


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.django_db(transaction=True)
def test_with_redis_down_pages_render_submits_work_and_the_dashboard_polls(servers, private_redis):
    project = make_project(answers_per_item=1, retrain_every=0)
    make_items(project, count=4, n_steps=3)
    viewer = add_member(project, Role.VIEWER, "watcher")
    cookie = {"Cookie": session_cookie(viewer)}
    server = servers(REDIS_URL=private_redis.url).start()
    [client] = annotators(project, server.url, 1)

    def submit_one() -> tuple[Submit, float]:
        item = call("POST", f"{server.url}/api/projects/{project.pk}/next/", token=client.token).json()
        started = time.monotonic()
        submit = client.submit(Submit(client.username, item["id"], client.answer_body(item)))
        return submit, time.monotonic() - started

    first, _ = submit_one()
    assert first.status == 201
    private_redis.kill9()

    dashboard = call("GET", f"{server.url}/projects/{project.pk}/", headers=cookie)
    assert dashboard.status == 200
    page = dashboard.body.decode()
    assert f'data-poll-url="/projects/{project.pk}/stats/"' in page and "annotation/live.js" in page
    script = call("GET", f"{server.url}/static/annotation/live.js")
    assert script.status == 200 and b"startPolling" in script.body

    for expected in (2, 3):
        submit, took = submit_one()
        assert submit.status == 201, server.logs()
        assert took < 10, f"a submit took {took:.1f} s with Redis down"
        stats = call("GET", f"{server.url}/projects/{project.pk}/stats/", headers={**cookie, "HX-Request": "true"})
        assert stats.status == 200
        assert f'id="stat-answers">{expected}<' in stats.body.decode()
    assert stored(first) and stored(submit)
    assert_consistent(project)
    for path in ("/", f"/projects/{project.pk}/items/"):
        assert call("GET", server.url + path, headers=cookie).status == 200, path


# --- the 503 itself (simulated database errors; any database) --------------------------------------


@pytest.mark.django_db
def test_a_database_error_in_an_api_view_answers_503_json(project, annotator, items):
    token = Token.objects.create(user=annotator).key
    with mock.patch("annotation.queue.next_item", side_effect=OperationalError("server closed the connection")):
        reply = Client().post(f"/api/projects/{project.pk}/next/", HTTP_AUTHORIZATION=f"Token {token}")
    assert reply.status_code == 503
    assert reply["Retry-After"] == "5"
    assert reply.json() == {"detail": "The database is not reachable right now. Please try again in a few seconds."}


@pytest.mark.django_db
def test_a_database_error_in_a_page_answers_a_short_503_page(project, viewer):
    client = Client()
    client.force_login(viewer)
    with mock.patch("annotation.views.projects.project_stats", side_effect=OperationalError("connection refused")):
        reply = client.get(f"/projects/{project.pk}/")
    assert reply.status_code == 503
    assert reply["Retry-After"] == "5"
    assert reply["Content-Type"].startswith("text/html")
    assert b"Temporarily unavailable" in reply.content and b"connection refused" not in reply.content


@pytest.mark.django_db
def test_other_errors_are_not_turned_into_503(project, annotator, items):
    token = Token.objects.create(user=annotator).key
    with mock.patch("annotation.queue.next_item", side_effect=ValueError("a bug")), pytest.raises(ValueError):
        Client().post(f"/api/projects/{project.pk}/next/", HTTP_AUTHORIZATION=f"Token {token}")
