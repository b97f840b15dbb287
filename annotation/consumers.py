"""Websockets: the live dashboard of a project.

The browser opens ws/projects/<id>/live/. The consumer checks the user's
membership (close code 4403 otherwise), joins the project's group, and on every
"project.changed" event sends the re-rendered stats fragment, which the page
swaps in place. ModelsLiveConsumer does the same for the Models page (managers only).
"""

import asyncio
import time

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.template.loader import render_to_string

from .live import group_name
from .models import Project
from .permissions import MANAGE, VIEW, can, capabilities
from .stats import project_stats


class ProjectLiveConsumer(AsyncWebsocketConsumer):
    # Bursts of submits are coalesced: at most one re-render per interval per socket.
    min_interval = 1.0
    _pending = False
    _last_sent = 0.0

    async def connect(self):
        self.project_id = self.scope["url_route"]["kwargs"]["project_id"]
        user = self.scope.get("user")
        allowed = await database_sync_to_async(self._allowed)(user)
        if not allowed:
            await self.close(code=4403)
            return
        self.group = group_name(self.project_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send(text_data=await database_sync_to_async(self._render)())

    def _allowed(self, user) -> bool:
        return bool(user and user.is_authenticated and can(user, self.project_id, VIEW, fresh=True))

    def _render(self) -> str:
        project = Project.objects.get(pk=self.project_id)
        user = self.scope["user"]
        return render_to_string(
            "annotation/_dashboard_stats.html",
            {"project": project, "stats": project_stats(project), "project_caps": capabilities(user, project)},
        )

    async def disconnect(self, code):
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None):
        """Clients only listen; anything they send is ignored."""

    async def project_changed(self, event):
        # Handlers run one at a time, so the re-render runs in its own task and
        # events that arrive meanwhile fold into it.
        if not self._pending:
            self._pending = True
            asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self):
        try:
            wait = self._last_sent + self.min_interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._pending = False
            # Re-check membership on every push: a removed member stops receiving data.
            if not await database_sync_to_async(self._allowed)(self.scope.get("user")):
                await self.close(code=4403)
                return
            html = await database_sync_to_async(self._render)()
            self._last_sent = time.monotonic()
            await self.send(text_data=html)
        finally:
            self._pending = False


class ModelsLiveConsumer(ProjectLiveConsumer):
    """ws/projects/<id>/models/live/: the live part of the Models page, for managers.

    Training workers publish "models.changed" to the project's models group (annotation.training.publish)
    at most once a second; each push re-checks the MANAGE capability with fresh membership."""

    min_interval = 0.5

    async def connect(self):
        self.project_id = self.scope["url_route"]["kwargs"]["project_id"]
        if not await database_sync_to_async(self._allowed)(self.scope.get("user")):
            await self.close(code=4403)
            return
        from .training import models_group

        self.group = models_group(self.project_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send(text_data=await database_sync_to_async(self._render)())

    def _allowed(self, user) -> bool:
        return bool(user and user.is_authenticated and can(user, self.project_id, MANAGE, fresh=True))

    def _render(self) -> str:
        from .views.models import models_context

        project = Project.objects.get(pk=self.project_id)
        user = self.scope["user"]
        return render_to_string(
            "annotation/_models_live.html",
            {"project": project, "project_caps": capabilities(user, project), **models_context(project)},
        )

    async def models_changed(self, event):
        await self.project_changed(event)
