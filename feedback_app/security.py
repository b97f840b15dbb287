"""Content-Security-Policy and login throttling (docs/security.md).

ContentSecurityPolicyMiddleware
    Sets a Content-Security-Policy header on every response that has none: a strict one on
    HTML pages (scripts only from our own origin, no inline script, no inline style), a looser
    style rule on the API's HTML pages (the Redoc docs page and DRF's browsable API style
    themselves inline), and a deny-all one on everything else (JSON, CSV, files), which no
    browser should ever run anything from.

ThrottledModelBackend + LoginThrottleMiddleware
    Every password check (the login form, Django's admin login, the API token endpoint: all go
    through django.contrib.auth.authenticate) first writes a LoginAttempt row, then counts the
    rows of the last WINDOW for the username and for the client address. Over the limits, the
    check is refused before the password is compared: LoginThrottled, answered with HTTP 429
    (DRF answers it on the API; LoginThrottleMiddleware on pages). A success deletes the
    username's rows; a failure keeps its row, so it counts.

    Why a table of our own rather than Django's cache: the counters must be shared by every web
    process and machine. The database is the one service every deployment has; the database
    cache backend would need `createcachetable` wherever the app is installed (forgetting it
    turns every login into a 500), and the Redis one exists only when REDIS_URL is set. Writing
    the row before the password check also makes concurrent guesses count against each other
    (a burst of parallel requests cannot slip past the count), which a cache's get-then-set
    cannot promise on the database backend.
"""

from __future__ import annotations

import math
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import DisallowedHost
from django.http import JsonResponse
from django.shortcuts import render
from django.utils import timezone
from rest_framework.exceptions import APIException

# --- Content-Security-Policy -----------------------------------------------------------------

# Pages of the app. No 'unsafe-inline' anywhere: the templates carry no inline <script>, no
# on*= handler and no style= attribute (progress bars are SVG, behaviour lives in
# static/annotation/*.js), and htmx is told not to inject its indicator <style>
# (includeIndicatorStyles=false in base.html's htmx-config). Changing a style from JavaScript
# (element.style, the CSSOM) is not inline style and stays allowed.
APP_DIRECTIVES = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'"],
    "font-src": ["'self'"],
    "connect-src": ["'self'"],  # + ws:// and wss:// of the request's host (the live updates)
    "object-src": ["'none'"],
    "base-uri": ["'self'"],
    "form-action": ["'self'"],
    "frame-ancestors": ["'none'"],
}

# HTML under /api/: the docs page (Redoc, served from drf-spectacular-sidecar) and DRF's browsable
# API. Scripts stay 'self' only. Styles need 'unsafe-inline': Redoc builds its styles at run time
# as <style> elements (styled-components) and the browsable API's templates have style=
# attributes. Inline style cannot run code; the risk left is CSS-based restyling of pages that
# show only the API's own description. Redoc draws its icons from data: URLs and runs its search
# in a worker made from a blob: URL (only script that already runs can make one). Its "by
# Redocly" footer logo comes from a CDN and stays blocked: the app loads nothing from elsewhere.
API_HTML_DIRECTIVES = {
    **APP_DIRECTIVES,
    "style-src": ["'self'", "'unsafe-inline'"],
    "img-src": ["'self'", "data:"],
    "worker-src": ["'self'", "blob:"],
}

# Anything that is not HTML (JSON, CSV, downloads): nothing may load or run in it, and nobody may
# frame it.
NON_HTML_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

API_PREFIX = "/api/"


def _format(directives: dict[str, list[str]]) -> str:
    return "; ".join(f"{name} {' '.join(sources)}" for name, sources in directives.items())


def _websocket_sources(request) -> list[str]:
    # CSP Level 3 lets 'self' match ws:/wss: of the same host, but older browsers do not: name them.
    try:
        host = request.get_host()  # validated against ALLOWED_HOSTS, so safe in a header
    except DisallowedHost:
        return []
    return [f"ws://{host}", f"wss://{host}"]


def content_security_policy(request, response) -> str:
    content_type = response.get("Content-Type", "")
    if not content_type.startswith("text/html"):
        return NON_HTML_POLICY
    directives = API_HTML_DIRECTIVES if request.path.startswith(API_PREFIX) else APP_DIRECTIVES
    directives = {**directives, "connect-src": directives["connect-src"] + _websocket_sources(request)}
    if settings.DEBUG and response.status_code in (404, 500):
        # Django's technical 404/500 pages (DEBUG only) style and script themselves inline.
        directives |= {"script-src": ["'self'", "'unsafe-inline'"], "style-src": ["'self'", "'unsafe-inline'"]}
    return _format(directives)


class ContentSecurityPolicyMiddleware:
    """Adds Content-Security-Policy to every response that does not set its own."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = content_security_policy(request, response)
        return response


# --- login throttling ------------------------------------------------------------------------

WINDOW = timedelta(minutes=15)
USERNAME_LIMIT = 5  # failed logins per username within WINDOW
ADDRESS_LIMIT = 20  # failed logins per client address within WINDOW


def now():
    """The clock of the throttle (tests move it)."""
    return timezone.now()


class LoginThrottled(APIException):
    """Too many failed logins: refused without checking the password. DRF answers it as 429 with
    Retry-After; on pages LoginThrottleMiddleware does."""

    status_code = 429
    default_code = "throttled"

    def __init__(self, message: str, wait: int):
        super().__init__(message)
        self.message = message
        self.wait = wait  # seconds; DRF turns it into Retry-After
        self.detail = {"detail": message, "errors": []}  # the API's error shape


def client_address(request) -> str:
    """The address the request came from, as the server saw it. With BEHIND_TLS_PROXY=1 `manage.py
    serve` takes it from X-Forwarded-For (feedback_app/web.py), so behind a proxy this is the
    proxy's client; the proxy must set that header itself (not append to one the client sent)
    unless FORWARDED_ALLOW_IPS names the proxy, or the per-address limit can be dodged
    (docs/security.md). The per-username limit does not depend on it."""
    if request is None:
        return ""
    return str(request.META.get("REMOTE_ADDR") or "")[:64]


def _username_key(username) -> str:
    return str(username).casefold()[:150]


def _retry_after(rows, limit: int, at) -> int:
    """Seconds until fewer than `limit` of these rows (oldest first) are inside the window."""
    times = list(rows.order_by("at").values_list("at", flat=True))
    first_to_expire = times[len(times) - limit]  # once this one leaves the window, limit - 1 remain
    return max(1, math.ceil((first_to_expire + WINDOW - at).total_seconds()))


def begin_attempt(request, username):
    """Record a password check about to happen; raise LoginThrottled (and audit it) when over a limit."""
    from annotation.models import AuditEvent, LoginAttempt

    at = now()
    name = _username_key(username)
    address = client_address(request)
    LoginAttempt.objects.filter(at__lte=at - WINDOW).delete()  # prune: only the window matters
    attempt = LoginAttempt.objects.create(username=name, ip=address, at=at)
    recent = LoginAttempt.objects.filter(at__gt=at - WINDOW).exclude(pk=attempt.pk)
    by_user = recent.filter(username=name)
    by_address = recent.filter(ip=address) if address else recent.none()
    waits = []
    if by_user.count() >= USERNAME_LIMIT:
        waits.append(("username", _retry_after(by_user, USERNAME_LIMIT, at)))
    if address and by_address.count() >= ADDRESS_LIMIT:
        waits.append(("address", _retry_after(by_address, ADDRESS_LIMIT, at)))
    if not waits:
        return attempt
    limit, wait = max(waits, key=lambda w: w[1])
    AuditEvent.record(actor=None, verb="login.throttled", obj=attempt,
                      after={"username": name, "ip": address, "limit": limit, "retry_after_s": wait})
    attempt.delete()  # a refused attempt checked no password: it is no failure and does not extend the lock
    minutes = math.ceil(wait / 60)
    who = "for this username" if limit == "username" else "from your address"
    raise LoginThrottled(
        f"Too many failed logins {who}. Try again in {minutes} minute{'s' if minutes != 1 else ''}.", wait)


def login_succeeded(username) -> None:
    """A correct password: the username's failures are forgiven (the address's are not)."""
    from annotation.models import LoginAttempt

    LoginAttempt.objects.filter(username=_username_key(username)).delete()


class ThrottledModelBackend(ModelBackend):
    """Django's ModelBackend behind the login throttle. It must be the only password backend
    (AUTHENTICATION_BACKENDS): a failure here counts even if another backend would accept."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        if username is None:
            username = kwargs.get(get_user_model().USERNAME_FIELD)
        if username is None or password is None:
            return None
        begin_attempt(request, username)
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is not None:
            login_succeeded(username)
        return user


class LoginThrottleMiddleware:
    """Answers LoginThrottled raised by a page (the login form, the admin login) with the login
    page, its message and HTTP 429. API views answer it themselves (it is a DRF exception)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not isinstance(exception, LoginThrottled):
            return None
        if request.path.startswith(API_PREFIX):
            response = JsonResponse(exception.detail, status=429)
        else:
            form = AuthenticationForm(request, initial={"username": request.POST.get("username", "")})
            response = render(request, "registration/login.html",
                              {"form": form, "throttled": exception.message, "next": request.POST.get("next", "")},
                              status=429)
        response["Retry-After"] = str(exception.wait)
        return response

