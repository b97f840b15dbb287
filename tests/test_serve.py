"""The production server, `manage.py serve` (uvicorn, feedback_app/web.py), in a child process: pages,
static files, the API and live updates over a websocket, one web process and two (which need Redis:
connections handed out evenly, a killed web process replaced, none left behind by a killed server);
the client address it hands the app, with and without a trusted proxy in front.

The server runs against the test database (tests/test_faults.py's Server helper)."""

import contextlib
import json
import os
import signal
import socket
import time
import urllib.error
import urllib.request

import pytest
from websockets.sync.client import connect

from annotation.models import LoginAttempt, Role
from feedback_app.web import REPORT_S

from .factories import PASSWORD, add_member, full_answer, make_items, make_project, wait_until
from .test_faults import Server, call, session_cookie

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def server(tmp_path, request):
    env = getattr(request, "param", {})
    s = Server(tmp_path, **env)
    yield s.start()
    s.stop()


def _websocket(server, project, user):
    return connect(f"ws://127.0.0.1:{server.port}/ws/projects/{project.pk}/live/", open_timeout=10,
                   additional_headers={"Cookie": session_cookie(user), "Origin": server.url})


def web_children(server) -> list[int]:
    """Pids of the web processes the server started (`python -m feedback_app.web`)."""
    out = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == server.proc.pid and b"feedback_app.web" in cmd:
            out.append(int(pid))
    return out


def open_connections(pid: int, port: int) -> set[int]:
    """Socket inodes of the established TCP connections on `port` that process `pid` holds."""
    held = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                held.add(int(target[8:-1]))
    established = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in list(f)[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    established.add(int(fields[9]))
    return held & established


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _submit(server, project, item, token) -> int:
    claimed = call("POST", f"{server.url}/api/projects/{project.pk}/next/", token=token)
    assert claimed.status == 200 and claimed.json()["id"] == item.pk, claimed
    body = {"data": full_answer(item), "time_spent_ms": 1000}
    return call("POST", f"{server.url}/api/projects/{project.pk}/items/{item.pk}/answer/", token=token,
                body=body).status


def test_serves_pages_static_files_the_api_and_live_updates(server):
    project = make_project(answers_per_item=1)
    viewer = add_member(project, Role.VIEWER)
    annotator = add_member(project, Role.ANNOTATOR)
    token = call("POST", f"{server.url}/api/auth/token/", body={"username": annotator.username, "password": PASSWORD})
    assert token.status == 200, token
    item = make_items(project, count=2)[0]

    login = call("GET", f"{server.url}/accounts/login/")
    assert login.status == 200 and b"<form" in login.body
    assert login.headers.get("Server") is None  # no server banner
    assert "script-src" in login.headers["Content-Security-Policy"]
    script = call("GET", f"{server.url}/static/annotation/live.js")
    assert script.status == 200 and script.body

    with _websocket(server, project, viewer) as ws:
        assert 'id="stat-answers">0<' in ws.recv(timeout=10)  # the dashboard as it is on connect
        assert _submit(server, project, item, token.json()["token"]) == 201
        pushed = ws.recv(timeout=10)
    assert 'id="stat-answers">1<' in pushed and annotator.username in pushed


def test_a_websocket_from_another_site_is_refused(server):
    project = make_project()
    viewer = add_member(project, Role.VIEWER)
    with pytest.raises(Exception) as refused:
        connect(f"ws://127.0.0.1:{server.port}/ws/projects/{project.pk}/live/", open_timeout=10,
                additional_headers={"Cookie": session_cookie(viewer), "Origin": "http://evil.example"}).close()
    assert "403" in str(refused.value)


@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="two web processes need Redis (REDIS_URL)")
@pytest.mark.parametrize("server", [{"WEB_PROCESSES": "2"}], indirect=True)
def test_two_web_processes_share_the_connections_and_push_to_every_websocket(server):
    """The dispatcher hands the connections out evenly; a submit on either process reaches the
    dashboards open on both, through Redis."""
    project = make_project(answers_per_item=1)
    viewer = add_member(project, Role.VIEWER)
    annotator = add_member(project, Role.ANNOTATOR)
    token = call("POST", f"{server.url}/api/auth/token/",
                 body={"username": annotator.username, "password": PASSWORD}).json()["token"]
    items = make_items(project, count=4)
    children = web_children(server)
    assert len(children) == 2, children
    with contextlib.ExitStack() as stack:
        sockets = []
        for _ in range(6):
            sockets.append(stack.enter_context(_websocket(server, project, viewer)))
            sockets[-1].recv(timeout=10)
            time.sleep(2 * REPORT_S)  # each process reports its open connections at most this often
        assert sorted(len(open_connections(pid, server.port)) for pid in children) == [3, 3]
        for done, item in enumerate(items, start=1):
            assert _submit(server, project, item, token) == 201
            for ws in sockets:
                assert f'id="stat-answers">{done}<' in ws.recv(timeout=10)

    # A web process killed: the server starts another; meanwhile the other one takes the connections.
    # A connection handed over in the instant the process dies (its threads still closing its
    # descriptors, so the hand-over succeeds) is lost with it, as with any server whose process dies;
    # from the moment the supervisor has seen the death, none is.
    os.kill(children[0], signal.SIGKILL)
    wait_until("the supervisor to see the web process die", lambda: "exited with -9" in server.logs(), 10)
    for _ in range(5):
        assert call("GET", f"{server.url}/accounts/login/").status == 200
    wait_until("a new web process", lambda: len(web_children(server)) == 2, 30, logs=server.logs)
    assert children[0] not in web_children(server)

    server.kill9()  # the supervisor: its web processes must not live on as orphans
    wait_until("the orphaned web processes to exit", lambda: not any(alive(p) for p in children), 20)


def _failed_login(server, username, headers):
    reply = call("POST", f"{server.url}/api/auth/token/", body={"username": username, "password": "wrong"},
                 headers=headers)
    assert reply.status == 400, reply
    return LoginAttempt.objects.get(username=username).ip


@pytest.mark.parametrize("server, expected", [
    ({}, "127.0.0.1"),  # straight to the server: a header anyone can send names nobody
    ({"BEHIND_TLS_PROXY": "1"}, "198.51.100.1"),  # behind the proxy: the first address it names
    # the proxy named: the last address that is not the proxy's, whatever the client put before it
    ({"BEHIND_TLS_PROXY": "1", "FORWARDED_ALLOW_IPS": "127.0.0.1"}, "203.0.113.7"),
], indirect=["server"])
def test_the_client_address_comes_from_the_proxy_only_behind_one(server, expected):
    headers = {"X-Forwarded-For": "198.51.100.1, 203.0.113.7", "X-Forwarded-Proto": "https"}
    assert _failed_login(server, f"nobody-{expected}", headers) == expected


def test_sigterm_stops_the_server_cleanly(server):
    """A deploy's SIGTERM: the server finishes, exits 0 and frees its port."""
    assert call("GET", f"{server.url}/accounts/login/").status == 200
    server.proc.terminate()
    assert server.proc.wait(timeout=20) == 0, server.logs()
    with pytest.raises(ConnectionRefusedError):  # nothing listens there any more
        socket.create_connection(("127.0.0.1", server.port), timeout=5).close()


def test_a_body_over_the_limit_gets_413_and_the_server_goes_on(server, settings):
    too_long = b"[" + b"0," * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE // 2) + b"0]"
    request = urllib.request.Request(f"{server.url}/api/auth/token/", data=too_long, method="POST",
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=20)
    assert refused.value.code == 413
    assert "DATA_UPLOAD_MAX_MEMORY_SIZE" in json.loads(refused.value.read())["detail"]
    assert call("GET", f"{server.url}/accounts/login/").status == 200
