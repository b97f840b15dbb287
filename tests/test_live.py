"""Live dashboard: a submit pushes fresh stats to open websockets (in-memory layer, or Redis when REDIS_URL is set)."""

import asyncio

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connections
from django.test import override_settings

from annotation import answers, live
from annotation.models import Role
from feedback_app.asgi import application

from .factories import add_member, full_answer, make_items, make_project


def _communicator(project, user):
    comm = WebsocketCommunicator(application, f"/ws/projects/{project.pk}/live/", headers=[(b"origin", b"http://localhost")])
    comm.scope["user"] = user
    return comm


@pytest.mark.django_db(transaction=True)
def test_submit_pushes_new_stats_to_the_dashboard():
    project = make_project(answers_per_item=1)
    viewer = add_member(project, Role.VIEWER)
    annotator = add_member(project, Role.ANNOTATOR)
    item = make_items(project, count=2)[0]

    async def scenario():
        comm = _communicator(project, viewer)
        connected, _ = await comm.connect()
        assert connected
        first = await comm.receive_from(timeout=5)
        assert 'id="stat-answers">0<' in first
        await sync_to_async(answers.submit)(item, annotator, full_answer(item))
        pushed = await comm.receive_from(timeout=5)
        assert 'id="stat-answers">1<' in pushed
        assert annotator.username in pushed
        await comm.disconnect()
        await sync_to_async(connections.close_all)()

    asyncio.run(scenario())


@pytest.mark.django_db(transaction=True)
def test_a_member_removed_while_connected_stops_receiving():
    project = make_project()
    viewer = add_member(project, Role.VIEWER)
    annotator = add_member(project, Role.ANNOTATOR)
    item = make_items(project, count=1)[0]

    async def scenario():
        comm = _communicator(project, viewer)
        assert (await comm.connect())[0]
        await comm.receive_from(timeout=5)
        await sync_to_async(lambda: project.memberships.filter(user=viewer).delete())()
        await sync_to_async(answers.submit)(item, annotator, full_answer(item))
        out = await comm.receive_output(timeout=5)
        assert out["type"] == "websocket.close"
        assert out.get("code") == 4403
        await sync_to_async(connections.close_all)()

    asyncio.run(scenario())


@pytest.mark.django_db(transaction=True)
def test_submits_still_work_when_the_channel_layer_is_down():
    """A broken Redis must not lose answers: the page falls back to polling."""
    project = make_project()
    annotator = add_member(project, Role.ANNOTATOR)
    item = make_items(project, count=1)[0]
    broken = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                          "CONFIG": {"hosts": [{"address": "redis://127.0.0.1:1/0", "socket_timeout": None}]}}}
    from channels.layers import channel_layers

    with override_settings(CHANNEL_LAYERS=broken):
        channel_layers.backends.clear()
        try:
            result = answers.submit(item, annotator, full_answer(item))
        finally:
            channel_layers.backends.clear()
    assert result.created
    item.refresh_from_db()
    assert item.answer_count == 1


def test_group_names_are_per_project():
    assert live.group_name(3) != live.group_name(4)


def test_changes_within_a_window_go_out_as_one_message_at_its_end(monkeypatch):
    """A busy project is not flooded: the first change is sent at once, the others within
    COALESCE_SECONDS become one message at the end of the window (so the last change is never lost)."""
    import time

    sent = []
    project_id = 987_654_321  # no other test publishes for it (earlier tests' messages may still be due)
    monkeypatch.setattr(live, "_send", lambda pid, event: sent.append((pid, event["what"]))
                        if pid in (project_id, project_id + 1) else None)
    monkeypatch.setattr(live, "COALESCE_SECONDS", 0.2)
    live._publish(project_id, "answers")
    assert sent == [(project_id, "answers")]
    live._publish(project_id, "answers")
    live._publish(project_id, "answers")
    live._publish(project_id + 1, "answers")  # another project is not held back
    assert sent == [(project_id, "answers"), (project_id + 1, "answers")]
    deadline = time.monotonic() + 3
    while len(sent) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    assert sent == [(project_id, "answers"), (project_id + 1, "answers"), (project_id, "answers")]
