"""A database that cannot be reached answers 503 with Retry-After, not a 500 with a traceback.

While the database restarts (or the network to it is cut) every query raises OperationalError or
InterfaceError. Views, DRF views included (DRF's exception handler re-raises errors that are not API
exceptions) and template rendering raise into `process_exception`, which answers:

- API requests (`/api/…`, or a client that asks for JSON): 503 `{"detail": "…"}`;
- pages: 503 with a short HTML page;

both with `Retry-After`. Nothing half-done is kept: the transaction that failed is rolled back. A
503 does not always mean nothing was stored, though: when the database goes away after a submit's
transaction committed but before its response was built, the answer is stored and the client still
gets 503. Sending the same request again is safe either way (a repeated identical submit returns the
stored answer with 200). The broken connection is closed at the end of the request (and
health-checked at the start of the next one with CONN_HEALTH_CHECKS), so the app recovers by itself
once the database is back.
"""

import logging

from django.db import InterfaceError, OperationalError, connections
from django.http import HttpResponse, JsonResponse

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5
MESSAGE = "The database is not reachable right now. Please try again in a few seconds."

_ERRORS: tuple[type[BaseException], ...] = (OperationalError, InterfaceError)
try:  # a psycopg error can escape Django's wrapper (for example while a broken connection is closed)
    import psycopg

    _ERRORS += (psycopg.OperationalError, psycopg.InterfaceError)
except ImportError:  # pragma: no cover - SQLite-only installs
    pass

PAGE = (
    "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Temporarily unavailable</title></head>"
    "<body><h1>Temporarily unavailable</h1><p>{message}</p><p><a href=\"\">Try again</a></p></body></html>"
)


def is_database_unavailable(exc: BaseException) -> bool:
    return isinstance(exc, _ERRORS)


def wants_json(request) -> bool:
    if request.path.startswith("/api/"):
        return True
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/html" not in accept


def unavailable_response(request) -> HttpResponse:
    if wants_json(request):
        response = JsonResponse({"detail": MESSAGE}, status=503)
    else:
        response = HttpResponse(PAGE.format(message=MESSAGE), status=503, content_type="text/html; charset=utf-8")
    response["Retry-After"] = str(RETRY_AFTER_S)
    response["Cache-Control"] = "no-store"
    return response


class DatabaseUnavailableMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exc):
        if not is_database_unavailable(exc):
            return None
        return self._unavailable(request, exc)

    def _unavailable(self, request, exc):
        log.warning("database unavailable during %s %s: %s", request.method, request.path, exc)
        for conn in connections.all(initialized_only=True):
            # Mark it so that the end of the request closes it unless it works again.
            conn.errors_occurred = True
        return unavailable_response(request)
