"""feedback_app/bridge.py: ordinary HTTP requests from the event loop to a WSGI app on a thread pool.
A small WSGI app stands in for Django, so what crosses (body, headers, status, streamed chunks, the
close that releases the request's database connections) is checked on its own."""

import asyncio
import json
import threading

import pytest
from asgiref.testing import ApplicationCommunicator

from feedback_app import bridge

SCOPE = {"type": "http", "http_version": "1.1", "method": "POST", "scheme": "http", "path": "/api/echo/",
         "raw_path": b"/api/echo/", "query_string": b"q=1", "root_path": "", "server": ("testserver", 80),
         "client": ("203.0.113.5", 5000), "headers": [(b"content-type", b"application/json")]}


class Echo:
    """Answers with what it got; records the threads it ran and closed on."""

    def __init__(self):
        self.calls, self.closed_on = [], []

    def __call__(self, environ, start_response):
        body = environ["wsgi.input"].read()
        self.calls.append(threading.current_thread().name)
        out = json.dumps({"body": body.decode(), "query": environ["QUERY_STRING"], "method": environ["REQUEST_METHOD"],
                          "addr": environ["REMOTE_ADDR"], "type": environ.get("CONTENT_TYPE")}).encode()
        start_response("201 Created", [("Content-Type", "application/json"), ("X-Seen", "yes")])
        echo = self

        class Response(list):
            def close(self):
                echo.closed_on.append(threading.current_thread().name)

        return Response([out[:10], out[10:]])


def run(app, scope, messages, timeout=5):
    """Feed `messages` to the ASGI app; what it sent back."""

    async def go():
        comm = ApplicationCommunicator(app, scope)
        for m in messages:
            await comm.send_input(m)
        out = []
        try:
            while True:
                out.append(await comm.receive_output(timeout))
                if out[-1]["type"] == "http.response.body" and not out[-1].get("more_body"):
                    break
        except asyncio.TimeoutError:
            pass
        await comm.wait(timeout)
        return out

    return asyncio.run(go())


def body_of(sent) -> bytes:
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_a_body_in_several_messages_reaches_the_app_whole_and_the_response_comes_back():
    app = Echo()
    sent = run(bridge.PooledWSGI(app, workers=2, max_body=1000), SCOPE, [
        {"type": "http.request", "body": b'{"a": ', "more_body": True},
        {"type": "http.request", "body": b"1}", "more_body": False},
    ])
    start = sent[0]
    assert start["type"] == "http.response.start" and start["status"] == 201
    assert (b"x-seen", b"yes") in start["headers"]
    assert json.loads(body_of(sent)) == {"body": '{"a": 1}', "query": "q=1", "method": "POST",
                                         "addr": "203.0.113.5", "type": "application/json"}
    assert len(sent) == 2  # the whole response in one body message
    assert app.calls[0].startswith("web") and app.closed_on == app.calls  # closed on the same pool thread


def test_a_long_body_is_spooled_and_arrives_intact(monkeypatch):
    monkeypatch.setattr(bridge, "SPOOL_BYTES", 8)
    app = Echo()
    parts = [b"x" * 5, b"y" * 7, b"z" * 9]
    sent = run(bridge.PooledWSGI(app, workers=1, max_body=1000), SCOPE,
               [{"type": "http.request", "body": p, "more_body": i < 2} for i, p in enumerate(parts)])
    assert json.loads(body_of(sent))["body"] == "x" * 5 + "y" * 7 + "z" * 9


@pytest.mark.parametrize("path, kind", [("/api/echo/", b"application/json"), ("/projects/1/", b"text/plain; charset=utf-8")])
def test_a_body_over_the_limit_is_refused_with_413_before_the_app_runs(path, kind):
    app = Echo()
    scope = {**SCOPE, "path": path}
    sent = run(bridge.PooledWSGI(app, workers=1, max_body=10), scope, [
        {"type": "http.request", "body": b"0123456", "more_body": True},
        {"type": "http.request", "body": b"789ab", "more_body": False},
    ])
    assert sent[0]["status"] == 413 and (b"content-type", kind) in sent[0]["headers"]
    assert b"larger than 10 bytes (DATA_UPLOAD_MAX_MEMORY_SIZE)" in body_of(sent)
    assert app.calls == []


def test_a_declared_length_over_the_limit_is_refused_and_its_body_dropped_not_kept(monkeypatch):
    app = Echo()
    scope = {**SCOPE, "headers": [*SCOPE["headers"], (b"content-length", b"5000000")]}
    kept = []
    monkeypatch.setattr(bridge.tempfile, "TemporaryFile", lambda: kept.append(1))
    sent = run(bridge.PooledWSGI(app, workers=1, max_body=1000), scope, [
        {"type": "http.request", "body": b"x" * 3000, "more_body": True},
        {"type": "http.request", "body": b"x" * 3000, "more_body": False}])
    assert sent[0]["status"] == 413 and app.calls == [] and kept == []


def test_a_client_gone_before_its_body_ended_runs_nothing():
    app = Echo()
    sent = run(bridge.PooledWSGI(app, workers=1, max_body=1000), SCOPE, [
        {"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.disconnect"}], timeout=0.5)
    assert sent == [] and app.calls == []


def test_a_streaming_response_is_sent_chunk_by_chunk_and_closed():
    closed = []

    class Stream:
        streaming = True

        def __iter__(self):
            yield b"one,"
            yield b""
            yield b"two"

        def close(self):
            closed.append(threading.current_thread().name)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/csv")])
        return Stream()

    sent = run(bridge.PooledWSGI(app, workers=1, max_body=1000), {**SCOPE, "method": "GET"},
               [{"type": "http.request", "body": b"", "more_body": False}])
    assert [m.get("body") for m in sent[1:]] == [b"one,", b"two", b""]
    assert sent[1]["more_body"] is True and closed and closed[0].startswith("web")


def test_through_django_a_page_and_an_api_error(db):
    from feedback_app.asgi import application

    login = run(application, {**SCOPE, "method": "GET", "path": "/accounts/login/", "query_string": b"",
                              "headers": [(b"host", b"localhost")]},
                [{"type": "http.request", "body": b"", "more_body": False}])
    assert login[0]["status"] == 200 and b"<form" in body_of(login)
    bad = run(application, {**SCOPE, "path": "/api/auth/token/", "query_string": b"",
                            "headers": [(b"host", b"localhost"), (b"content-type", b"application/json")]},
              [{"type": "http.request", "body": b"{not json", "more_body": False}])
    assert bad[0]["status"] == 400 and "detail" in json.loads(body_of(bad))


def test_a_forked_child_serves_with_its_own_pool():
    """A live server forked from a process whose pool had started threads must not wait on them."""
    import os

    app = Echo()
    pooled = bridge.PooledWSGI(app, workers=1, max_body=1000)
    request = [{"type": "http.request", "body": b"1", "more_body": False}]
    assert run(pooled, SCOPE, request)[0]["status"] == 201  # the parent's pool has its thread now
    pid = os.fork()
    if pid == 0:
        try:
            ok = run(pooled, SCOPE, request, timeout=5)[0]["status"] == 201
        except BaseException:
            ok = False
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
