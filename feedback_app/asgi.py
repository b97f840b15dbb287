"""ASGI entry point: HTTP through Django's WSGI handler on a thread pool, websockets through Channels.

Every view of the app is synchronous. Django's own ASGI handler runs each request in a thread started
for that request and hops between it and the event loop several times (its sync middleware wraps an
async inner handler that wraps the sync view again); that took about a third of the server's CPU in
the review loop. feedback_app/bridge.py hands each request to the WSGI handler on a small fixed pool
of threads instead (WEB_THREADS): the body read first, one hop in, the whole response back in one.

Long streams (export downloads and import uploads) hold their thread for as long as the client takes,
so they still go through Django's ASGI handler, a thread each, and never fill the pool that serves
everything else. See docs/architecture.md ("Serving HTTP") for the numbers.
"""

import os
import re

from django.core.asgi import get_asgi_application
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "feedback_app.settings")
django_wsgi_app = get_wsgi_application()  # also django.setup(), before anything below imports models
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from annotation.routing import websocket_urlpatterns  # noqa: E402
from feedback_app.bridge import PooledWSGI  # noqa: E402

# export downloads (page and API) and import uploads (page and API)
STREAMS = re.compile(r"^/(api/)?projects/\d+/(export/(download/)?|imports/)$")


class HttpRouter:
    """Long streams to Django's ASGI handler (a thread each), every other request to the thread pool."""

    def __init__(self, pooled, streams):
        self.pooled, self.streams = pooled, streams

    async def __call__(self, scope, receive, send):
        app = self.streams if STREAMS.match(scope["path"]) else self.pooled
        return await app(scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": HttpRouter(PooledWSGI(django_wsgi_app, workers=settings.WEB_THREADS,
                                      max_body=settings.DATA_UPLOAD_MAX_MEMORY_SIZE),
                           django_asgi_app),
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
