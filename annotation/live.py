"""Live updates: tell the project's open dashboards that something changed.

Works with the in-memory channel layer (one process) and with Redis (any
number of processes). A failure to publish never fails the request that
changed the data: the pages also refresh by polling.
"""

import logging

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


def project_changed(project_id: int, what: str = "answers") -> None:
    """After the current transaction commits, tell dashboards of `project_id` to refresh."""
    transaction.on_commit(lambda: _send(project_id, {"type": "project.changed", "what": what}))
