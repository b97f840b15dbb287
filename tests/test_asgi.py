"""The ASGI entry point: ordinary requests run on the WSGI thread pool, long streams (export downloads,
import uploads) through Django's ASGI handler, websockets through Channels (tests/test_live.py)."""

import pytest
from asgiref.sync import async_to_sync
from channels.testing import HttpCommunicator

from feedback_app import asgi


@pytest.mark.parametrize("path, stream", [
    ("/projects/3/export/download/", True),
    ("/api/projects/3/export/", True),
    ("/projects/3/imports/", True),
    ("/api/projects/3/imports/", True),
    ("/projects/3/export/", True),  # the export page itself: short, either way is fine
    ("/api/projects/3/next/", False),
    ("/api/projects/3/items/9/answer/", False),
    ("/api/projects/3/imports/4/", False),
    ("/projects/3/imports/4/progress/", False),
    ("/accounts/login/", False),
    ("/static/app.css", False),
])
def test_long_streams_get_a_thread_each_everything_else_the_pool(path, stream):
    assert bool(asgi.STREAMS.match(path)) is stream


def _get(path: str):
    async def go():
        communicator = HttpCommunicator(asgi.application, "GET", path, headers=[(b"host", b"localhost")])
        return await communicator.get_response(timeout=20)

    return async_to_sync(go)()


@pytest.mark.django_db(transaction=True)
def test_both_handlers_answer_through_the_application(monkeypatch):
    seen = []
    for name in ("pooled", "streams"):
        app = getattr(asgi.application.application_mapping["http"], name)

        async def spy(scope, receive, send, app=app, name=name):
            seen.append(name)
            return await app(scope, receive, send)

        monkeypatch.setattr(asgi.application.application_mapping["http"], name, spy)

    page = _get("/accounts/login/")
    assert page["status"] == 200 and b"<form" in page["body"]
    download = _get("/projects/1/export/download/")  # anonymous: sent to log in, by the ASGI handler
    assert download["status"] == 302 and dict(download["headers"])[b"Location"].startswith(b"/accounts/login/")
    assert seen == ["pooled", "streams"]
