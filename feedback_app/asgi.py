"""ASGI entry point: HTTP through Django's WSGI handler on a thread pool, websockets through Channels.

Every view of the app is synchronous. Django's own ASGI handler runs each request in a thread started
for that request and hops between it and the event loop several times (its sync middleware wraps an
async inner handler that wraps the sync view again); that took about a third of the server's CPU in
the review loop. a2wsgi hands each request to the WSGI handler on a fixed pool of threads instead:
one hop in and a few queued sends out, request bodies and streamed responses still flow in chunks.
See docs/architecture.md ("Serving") for the numbers.
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "feedback_app.settings")
django_wsgi_app = get_wsgi_application()  # also django.setup(), before anything below imports models

from a2wsgi import WSGIMiddleware  # noqa: E402
from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from annotation.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": WSGIMiddleware(django_wsgi_app, workers=settings.WEB_THREADS),
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
