"""Live updates: tell the project's open dashboards that something changed.

Works with the in-memory channel layer (one process) and with Redis (any
number of processes). A failure to publish never fails the request that
changed the data: the pages also refresh by polling.
"""

import logging
import threading
import time

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

log = logging.getLogger(__name__)


def group_name(project_id: int) -> str:
    return f"project-{project_id}"


def _send(project_id: int, event: dict) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(group_name(project_id), event)
    except Exception:  # noqa: BLE001 - live updates are best effort; polling covers a broken layer
        log.warning("could not publish a live update for project %s", project_id, exc_info=True)


# Coalescing: a busy project changes many times a second (every submit), and each message makes every
# open dashboard recompute its stats. Per process, at most one message per (project, what) goes out
# per COALESCE_SECONDS: the first change is sent at once, later ones within the window are folded
# into one message sent when the window ends, so the last change always reaches the dashboards.
COALESCE_SECONDS = 0.5
_lock = threading.Lock()
_last_sent: dict[tuple[int, str], float] = {}
_pending: set[tuple[int, str]] = set()


def _flush(key: tuple[int, str]) -> None:
    with _lock:
        _pending.discard(key)
        _last_sent[key] = time.monotonic()
    _send(key[0], {"type": "project.changed", "what": key[1]})


def _publish(project_id: int, what: str) -> None:
    key = (project_id, what)
    now = time.monotonic()
    with _lock:
        if key in _pending:
            return  # a message is already due at the end of this window
        wait = _last_sent.get(key, float("-inf")) + COALESCE_SECONDS - now
        if wait > 0:
            _pending.add(key)
            timer = threading.Timer(wait, _flush, args=(key,))
            timer.daemon = True
            timer.start()
            return
        _last_sent[key] = now
        if len(_last_sent) > 10_000:  # forget old projects now and then
            _last_sent.clear()
            _last_sent[key] = now
    _send(project_id, {"type": "project.changed", "what": what})


def project_changed(project_id: int, what: str = "answers") -> None:
    """After the current transaction commits, tell dashboards of `project_id` to refresh (coalesced:
    at most one message per COALESCE_SECONDS per project, the last change always included)."""
    transaction.on_commit(lambda: _publish(project_id, what))
