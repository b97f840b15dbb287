"""Security controls (docs/security.md): the Content-Security-Policy, the login throttle, CSRF on
every form URL and on the API's session authentication, and escaping of untrusted text on every page.

The CSRF and escaping checks walk the URL configuration like tests/test_permissions.py does, so a
new page is covered without editing this file (and a page with a path parameter the `world`
fixture cannot fill fails here as it fails there).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from html.parser import HTMLParser
from unittest import mock

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth.backends import ModelBackend
from django.test import Client
from django.urls import get_resolver, reverse
from rest_framework.authentication import SessionAuthentication
from rest_framework.authtoken.models import Token

from annotation import answers, queue
from annotation.kinds import get_kind
from annotation.models import (AuditEvent, ImportJob, Item, ItemPayload, LoginAttempt, ModelVersion, Prediction,
                               Role, TrainingRun)
from feedback_app import security
from feedback_app.asgi import application
from tests.test_permissions import Endpoint, _walk, api_methods, fill, world  # noqa: F401 (world: a fixture)

from .factories import PASSWORD, add_member, make_items, make_project, make_user, trajectory

# --- walking the URL configuration ----------------------------------------------------------------


def _routes():
    """(route, name, callback, is_api) of every URL but Django's admin (its own, CSRF-protected, views)."""
    out = []
    for route, p in _walk(get_resolver().url_patterns):
        if route.startswith("admin/"):
            continue
        out.append((route, p.name or route, p.callback, hasattr(p.callback, "cls")))
    return out


ROUTES = _routes()
PAGE_ROUTES = [r for r in ROUTES if not r[3]]
API_ROUTES = [r for r in ROUTES if r[3]]
UNSAFE = ("post", "put", "patch", "delete")


def _param(routes):
    return [pytest.param(*r, id=r[1]) for r in routes]


# --- Content-Security-Policy ----------------------------------------------------------------------


def csp(response) -> dict[str, list[str]]:
    header = response["Content-Security-Policy"]
    out = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            out[words[0]] = words[1:]
    return out


def assert_strict_page_policy(response):
    policy = csp(response)
    assert policy["default-src"] == ["'self'"]
    assert policy["script-src"] == ["'self'"]  # no 'unsafe-inline', no 'unsafe-eval', no other origin
    assert policy["style-src"] == ["'self'"]
    assert policy["object-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["base-uri"] == ["'self'"]
    assert policy["form-action"] == ["'self'"]
    assert policy["connect-src"] == ["'self'", "ws://testserver", "wss://testserver"]
    assert "unsafe" not in response["Content-Security-Policy"]


def test_pages_carry_a_strict_policy(project, manager, items):
    client = Client()
    assert_strict_page_policy(client.get(reverse("login")))
    client.force_login(manager)
    for url in (reverse("project-list"), reverse("project-dashboard", args=[project.pk]),
                reverse("item-list", args=[project.pk]), reverse("models-page", args=[project.pk]),
                reverse("project-stats", args=[project.pk])):
        response = client.get(url, follow=True)
        assert response.status_code == 200, url
        assert_strict_page_policy(response)
    review = client.get(reverse("review-next", args=[project.pk]), follow=True)
    assert review.status_code == 200 and "review-form" in review.content.decode()
    assert_strict_page_policy(review)


def test_error_pages_and_redirects_carry_the_policy(project, outsider):
    client = Client()
    client.force_login(outsider)
    assert_strict_page_policy(client.get(reverse("project-dashboard", args=[project.pk])))  # 404
    anonymous = Client().get(reverse("project-dashboard", args=[project.pk]))
    assert anonymous.status_code == 302 and "Content-Security-Policy" in anonymous


def test_only_the_debug_error_pages_allow_inline_code(rf, settings):
    from django.http import HttpResponse

    request = rf.get("/nowhere/")
    settings.DEBUG = True
    assert "'unsafe-inline'" in security.content_security_policy(request, HttpResponse(status=404))
    assert "unsafe" not in security.content_security_policy(request, HttpResponse(status=200))
    settings.DEBUG = False
    assert "unsafe" not in security.content_security_policy(request, HttpResponse(status=404))


def test_api_responses_allow_nothing_to_run(project, manager):
    client = Client()
    client.force_login(manager)
    response = client.get(reverse("api-projects"), HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    policy = csp(response)
    assert policy["default-src"] == ["'none'"] and policy["frame-ancestors"] == ["'none'"]
    export = client.get(reverse("api-export", args=[project.pk]))
    assert csp(export)["default-src"] == ["'none'"]


def test_the_api_docs_page_loads_only_local_code(manager):
    client = Client()
    client.force_login(manager)
    response = client.get(reverse("api-docs"))
    assert response.status_code == 200
    html = response.content.decode()
    policy = csp(response)
    assert policy["script-src"] == ["'self'"]
    assert policy["style-src"] == ["'self'", "'unsafe-inline'"]  # Redoc writes its styles at run time
    assert policy["frame-ancestors"] == ["'none'"] and policy["object-src"] == ["'none'"]
    assert "googleapis" not in html and "gstatic" not in html  # no font CDN: the page works offline
    scripts = InlineCode.of(html)
    assert scripts.inline_scripts == [] and scripts.handlers == []


class InlineCode(HTMLParser):
    """What a strict CSP would block in a page: inline scripts, on*= handlers, style= attributes,
    javascript: URLs."""

    URL_ATTRS = {"href", "src", "action", "formaction", "xlink:href", "data"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.inline_scripts: list[str] = []
        self.handlers: list[str] = []
        self.styles: list[str] = []
        self.js_urls: list[str] = []
        self.text: list[str] = []
        self._in_script = False
        self._script_is_data = False

    @classmethod
    def of(cls, html: str) -> InlineCode:
        parser = cls()
        parser.feed(html)
        parser.close()
        return parser

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name, value in attrs.items():
            if name.startswith("on"):
                self.handlers.append(f"<{tag} {name}={value!r}>")
            if name == "style":
                self.styles.append(f"<{tag} style={value!r}>")
            if name in self.URL_ATTRS and (value or "").strip().lower().startswith("javascript:"):
                self.js_urls.append(f"<{tag} {name}={value!r}>")
        if tag == "script":
            self._in_script = True
            kind = (attrs.get("type") or "").lower()
            self._script_is_data = kind in ("application/json", "application/ld+json")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            if data.strip() and not self._script_is_data:
                self.inline_scripts.append(data.strip()[:200])
        else:
            self.text.append(data)

    @property
    def all_text(self) -> str:
        return "".join(self.text)


def test_templates_have_no_inline_script_handler_or_style():
    """The policy forbids them, so a template that adds one breaks in the browser: catch it here."""
    from django.conf import settings

    dirs = [settings.BASE_DIR / "templates", settings.BASE_DIR / "annotation" / "templates"]
    offenders = []
    for base in dirs:
        for path in base.rglob("*.html"):
            parsed = InlineCode.of(path.read_text())
            for found in parsed.inline_scripts + parsed.handlers + parsed.styles + parsed.js_urls:
                offenders.append(f"{path.relative_to(settings.BASE_DIR)}: {found}")
    assert offenders == []


def test_htmx_is_told_not_to_inject_styles_or_eval(manager):
    client = Client()
    client.force_login(manager)
    html = client.get(reverse("project-list")).content.decode()
    assert '"includeIndicatorStyles": false' in html and '"allowEval": false' in html


# --- login throttle -------------------------------------------------------------------------------


@pytest.fixture
def clock():
    """The throttle's clock, moved by hand."""
    from django.utils import timezone

    state = {"now": timezone.now()}
    with mock.patch.object(security, "now", side_effect=lambda: state["now"]):
        yield state


@pytest.fixture
def password_checks():
    """Counts the password comparisons (ModelBackend.authenticate behind the throttle)."""
    with mock.patch.object(ModelBackend, "authenticate", autospec=True,
                           side_effect=ModelBackend.authenticate) as spy:
        yield spy


def form_login(client, username, password, ip="10.0.0.1"):
    return client.post(reverse("login"), {"username": username, "password": password}, REMOTE_ADDR=ip)


def token_login(client, username, password, ip="10.0.0.1"):
    return client.post(reverse("api-token"), {"username": username, "password": password},
                       content_type="application/json", REMOTE_ADDR=ip)


def test_the_login_form_locks_a_username_after_five_failures(db, clock, password_checks):
    user = make_user("alice")
    client = Client()
    for _ in range(security.USERNAME_LIMIT):
        response = form_login(client, "alice", "wrong")
        assert response.status_code == 200 and "Please try again" in response.content.decode()
    checks = password_checks.call_count
    locked = form_login(client, "alice", PASSWORD)  # even the right password is refused now
    assert locked.status_code == 429
    assert password_checks.call_count == checks  # refused without comparing the password
    html = locked.content.decode()
    assert "Too many failed logins for this username. Try again in 15 minutes." in html
    assert int(locked["Retry-After"]) == 15 * 60
    assert "_auth_user_id" not in client.session
    assert_strict_page_policy(locked)
    event = AuditEvent.objects.get(verb="login.throttled")
    assert event.after == {"username": "alice", "ip": "10.0.0.1", "limit": "username", "retry_after_s": 900}
    assert event.actor is None and event.project is None
    # other usernames from the same address are not affected
    assert form_login(Client(), user.username + "-other", "wrong").status_code == 200


def test_the_username_counter_ignores_case_and_counts_unknown_usernames(db, clock):
    client = Client()
    for name in ("Ghost", "ghost", "GHOST", "gHost", "ghosT"):
        assert form_login(client, name, "wrong").status_code == 200
    assert form_login(client, "ghost", "wrong").status_code == 429


def test_the_token_endpoint_locks_a_username_with_429(db, clock, password_checks):
    make_user("bob")
    client = Client()
    for _ in range(security.USERNAME_LIMIT):
        assert token_login(client, "bob", "wrong").status_code == 400
    checks = password_checks.call_count
    locked = token_login(client, "bob", PASSWORD)
    assert locked.status_code == 429
    assert password_checks.call_count == checks
    assert locked.json() == {"detail": "Too many failed logins for this username. Try again in 15 minutes.",
                             "errors": []}
    assert locked["Retry-After"] == "900"
    assert csp(locked)["default-src"] == ["'none'"]
    assert AuditEvent.objects.filter(verb="login.throttled").count() == 1


def test_one_address_is_locked_after_twenty_failures_on_any_usernames(db, clock):
    make_user("carol")
    client = Client()
    for i in range(security.ADDRESS_LIMIT):
        endpoint = form_login if i % 2 else token_login
        assert endpoint(client, f"guess{i}", "wrong", ip="192.0.2.7").status_code in (200, 400)
    refused = form_login(client, "carol", PASSWORD, ip="192.0.2.7")
    assert refused.status_code == 429
    assert "Too many failed logins from your address." in refused.content.decode()
    assert token_login(client, "carol", PASSWORD, ip="192.0.2.7").status_code == 429
    assert AuditEvent.objects.filter(verb="login.throttled", after__limit="address").count() == 2
    # another address logs in
    other = Client()
    assert form_login(other, "carol", PASSWORD, ip="198.51.100.1").status_code == 302
    assert "_auth_user_id" in other.session


def test_a_success_resets_the_username_counter(db, clock):
    make_user("dave")
    client = Client()
    for _ in range(security.USERNAME_LIMIT - 1):
        assert form_login(client, "dave", "wrong").status_code == 200
    assert form_login(client, "dave", PASSWORD).status_code == 302
    client.logout()
    for _ in range(security.USERNAME_LIMIT):  # five more failures are allowed again
        assert form_login(client, "dave", "wrong").status_code == 200
    assert form_login(client, "dave", PASSWORD).status_code == 429
    # the success forgave the first four (typos, not an attack); the last five count, for the address too
    assert LoginAttempt.objects.filter(ip="10.0.0.1").count() == security.USERNAME_LIMIT


def test_the_lock_ends_when_the_window_passes(db, clock):
    make_user("erin")
    client = Client()
    start = clock["now"]
    for i in range(security.USERNAME_LIMIT):
        clock["now"] = start + timedelta(minutes=i)  # failures at 0, 1, 2, 3, 4 minutes
        token_login(client, "erin", "wrong")
    clock["now"] = start + timedelta(minutes=14, seconds=59)
    locked = token_login(client, "erin", PASSWORD)
    assert locked.status_code == 429 and locked["Retry-After"] == "1"  # the first failure leaves at 15:00
    clock["now"] = start + timedelta(minutes=15)
    assert token_login(client, "erin", PASSWORD).status_code == 200  # four failures left in the window
    assert "token" in token_login(client, "erin", PASSWORD).json()


def test_refused_attempts_do_not_extend_the_lock(db, clock):
    make_user("fay")
    client = Client()
    start = clock["now"]
    for _ in range(security.USERNAME_LIMIT):
        form_login(client, "fay", "wrong")
    for minute in range(1, 15):  # hammering while locked
        clock["now"] = start + timedelta(minutes=minute)
        assert form_login(client, "fay", "wrong").status_code == 429
    clock["now"] = start + timedelta(minutes=15, seconds=1)
    assert form_login(client, "fay", PASSWORD).status_code == 302


def test_old_attempts_are_pruned(db, clock):
    client = Client()
    start = clock["now"]
    for i in range(3):
        form_login(client, f"old{i}", "wrong")
    clock["now"] = start + timedelta(minutes=16)
    form_login(client, "new", "wrong")
    assert list(LoginAttempt.objects.values_list("username", flat=True)) == ["new"]


def test_the_admin_login_is_throttled_too(db, clock):
    make_user("root", is_staff=True, is_superuser=True)
    client = Client()
    for _ in range(security.USERNAME_LIMIT):
        client.post("/admin/login/", {"username": "root", "password": "wrong"}, REMOTE_ADDR="10.0.0.9")
    response = client.post("/admin/login/", {"username": "root", "password": PASSWORD}, REMOTE_ADDR="10.0.0.9")
    assert response.status_code == 429


# --- CSRF -----------------------------------------------------------------------------------------


def test_the_walk_finds_the_form_urls():
    names = {r[1] for r in PAGE_ROUTES}
    for expected in ("login", "logout", "project-create", "review-submit", "adjudicate", "member-remove",
                     "import-list", "models-retrain", "models-promote"):
        assert expected in names


@pytest.mark.parametrize("route, name, callback, api", _param(PAGE_ROUTES))
def test_every_page_refuses_a_state_change_without_a_csrf_token(world, route, name, callback, api):
    url = fill(Endpoint(route=route, name=name, callback=callback, api=api), world["params"])
    manager = world["users"][Role.MANAGER]
    for method in UNSAFE:
        client = Client(enforce_csrf_checks=True)
        client.force_login(manager)
        response = getattr(client, method)(url)
        assert response.status_code == 403, f"{method.upper()} {url} without a CSRF token: {response.status_code}"
        assert b"CSRF verification failed" in response.content, f"{method.upper()} {url}: 403 but not for CSRF"
    # the same request with the check off is not a CSRF failure: the 403 above came from the check
    plain = Client()
    plain.force_login(manager)
    response = plain.post(url)
    body = b"".join(response.streaming_content) if response.streaming else response.content
    assert b"CSRF verification failed" not in body


def _session_api_cases():
    out = []
    for route, name, callback, _api in API_ROUTES:
        cls = callback.cls
        if SessionAuthentication not in cls.authentication_classes:
            continue
        for method in api_methods(Endpoint(route=route, name=name, callback=callback, api=True)):
            if method in UNSAFE:
                out.append(pytest.param(route, name, callback, method, id=f"{name}-{method.upper()}"))
    return out


SESSION_API_CASES = _session_api_cases()


def test_only_the_token_endpoint_skips_session_authentication():
    sessionless = {r[1] for r in API_ROUTES
                   if SessionAuthentication not in r[2].cls.authentication_classes
                   and any(m in UNSAFE for m in api_methods(Endpoint(route=r[0], name=r[1], callback=r[2],
                                                                     api=True)))}
    assert sessionless == {"api-token"}
    assert len(SESSION_API_CASES) >= 10


@pytest.mark.parametrize("route, name, callback, method", SESSION_API_CASES)
def test_the_api_with_session_auth_needs_a_csrf_token_and_with_token_auth_does_not(world, route, name, callback,
                                                                                  method):
    url = fill(Endpoint(route=route, name=name, callback=callback, api=True), world["params"])
    manager = world["users"][Role.MANAGER]
    session = Client(enforce_csrf_checks=True)
    session.force_login(manager)
    response = session.generic(method.upper(), url, data="{}", content_type="application/json",
                               HTTP_ACCEPT="application/json")
    assert response.status_code == 403 and "CSRF Failed" in response.json()["detail"], \
        f"{method.upper()} {url} with a session and no CSRF token: {response.status_code} {response.content[:200]}"

    admin = make_user(f"csrf-admin-{method}", is_superuser=True, is_staff=True)  # may do anything
    token = Token.objects.create(user=admin)
    tokened = Client(enforce_csrf_checks=True)
    response = tokened.generic(method.upper(), url, data="{}", content_type="application/json",
                               HTTP_ACCEPT="application/json", HTTP_AUTHORIZATION=f"Token {token.key}")
    assert b"CSRF" not in response.content, f"{method.upper()} {url} with a token: {response.content[:200]}"
    assert response.status_code not in (401, 403)


def test_the_live_socket_refuses_another_sites_origin():
    """Cross-site websocket hijacking: a page on another origin cannot open the socket with the
    victim's session cookie (tests/test_permissions.py connects from the app's own origin). The
    origin check answers before the session, the consumer or the database are consulted."""

    async def connects(origin: bytes):
        comm = WebsocketCommunicator(application, "/ws/projects/1/live/", headers=[(b"origin", origin)])
        return await comm.connect(timeout=5)

    # A loop of its own, not asyncio.run(), and no database: this runs in the process that later
    # forks the browser tests' live server.
    loop = asyncio.new_event_loop()
    try:
        connected, _code = loop.run_until_complete(connects(b"https://evil.example"))
    finally:
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()
    assert connected is False


# --- XSS: untrusted text is shown as text ---------------------------------------------------------


def hostile(field: str) -> str:
    """Markup that runs script if it reaches the page unescaped; `field` names where it came from."""
    return (f"<script>window.__xss=1;alert('{field}')</script>[{field}]<img src=x onerror=\"window.__xss=1\">"
            f"\"><svg onload=window.__xss=1> javascript:window.__xss=1")


def hostile_world():
    """A project where every free text the app shows carries hostile markup: the project's name and
    guidelines, the payload (id, instruction, environment, observation, action, result, the LLM's
    step feedback reason and source), the model's explanations and attributions, answers' reasons
    and notes, an import's file name and errors, a training run's error and a model version."""
    project = make_project(name=hostile("project name")[:200], guidelines=hostile("guidelines"),
                           description=hostile("description"), answers_per_item=2)
    manager = add_member(project, Role.MANAGER, "xss-manager")
    first = add_member(project, Role.ANNOTATOR, "xss-first")
    second = add_member(project, Role.ANNOTATOR, "xss-second")

    kind = get_kind(project.kind)
    items = []
    for n in range(2):
        traj = trajectory(3, instruction=hostile("instruction"), tid=f"<svg onload=window.__xss=1>{n}")
        traj["environment"] = "<img src=x onerror=window.__xss=1>"
        for i, step in enumerate(traj["steps"]):
            step["observation"] = hostile("observation")
            step["action"] = hostile("action")
            step["result"] = hostile("result")
            step["feedback"] = {"productive": i % 2 == 0, "reason": hostile("llm reason"),
                                "source": "<svg onload=window.__xss=1>"}
            step["prediction"] = {"probability": 0.3 + 0.2 * i, "explanation": hostile("explanation")}
        parsed = kind.parse_line(traj, n + 1)
        item = Item.objects.create(project=project, seq=n + 1, external_id=parsed.external_id,
                                   step_count=parsed.step_count, priority=0.5)
        ItemPayload.objects.create(item=item, data=parsed.payload)
        prediction = dict(parsed.prediction)
        for step in prediction["steps"]:
            step["attributions"] = [["Before:", 0.0], ["<script>window.__xss=1</script>", 0.9],
                                    ["Action:", 0.0], ['"><img src=x onerror=window.__xss=1>', -0.9],
                                    ["After:", 0.0], ["javascript:window.__xss=1", 0.5]]
        Prediction.objects.create(item=item, model_version=parsed.model_version, data=prediction, uncertainty=0.5)
        items.append(item)
    disputed, open_item = items

    def answer(verdict):
        return {"steps": [{"step": i, "verdict": verdict, "reason": hostile("answer reason")} for i in range(3)],
                "notes": hostile("answer notes")}

    answers.submit(disputed, first, answer("agree"))
    answers.submit(disputed, second, answer("disagree"))
    disputed.refresh_from_db()
    assert disputed.state == Item.State.DONE
    assert queue.claim(project, manager) == open_item
    answers.save_draft(open_item, manager, answer("unsure"))

    job = ImportJob.objects.create(project=project, created_by=manager, filename=hostile("file name")[:255],
                                   path="imports/x.jsonl", status=ImportJob.Status.FAILED,
                                   errors=[{"line": 1, "field": hostile("error field"),
                                            "message": hostile("import error")}])
    version = ModelVersion.objects.create(project=project, version="<svg onload=window.__xss=1>v1",
                                          base_model=hostile("base model"), metrics={"n": 3})
    run = TrainingRun.objects.create(project=project, status=TrainingRun.Status.FAILED,
                                     error=hostile("run error"), reason=hostile("run reason")[:200],
                                     worker_id="<img src=x onerror=window.__xss=1>")
    AuditEvent.record(actor=manager, verb="project.settings", obj=project, project=project,
                      after={"guidelines": hostile("audit")})
    params = {"project_id": project.pk, "item_id": disputed.pk, "answer_id": disputed.answers.first().pk,
              "membership_id": project.memberships.get(user=second).pk, "job_id": job.pk, "import_id": job.pk,
              "import_job_id": job.pk, "run_id": run.pk, "version_id": version.pk}
    return {"project": project, "manager": manager, "disputed": disputed, "open": open_item, "job": job,
            "params": params}


# Where each hostile field must show up as text (so the checks below are not vacuous).
SHOWN = {
    "project-list": ["project name"],
    "project-dashboard": ["project name", "guidelines"],
    "item-detail": ["instruction", "observation", "action", "result", "llm reason"],
    "adjudicate": ["instruction", "observation", "action", "result", "llm reason", "explanation", "answer reason"],
    "review-item": ["instruction", "observation", "action", "result", "llm reason", "explanation", "answer reason",
                    "answer notes"],
    "import-list": ["file name"],
    "import-detail": ["file name", "import error"],
    "models-page": ["run error"],
    "project-audit": ["audit"],
    "project-settings": ["guidelines", "description"],
}


def assert_inert(html: str, where: str) -> InlineCode:
    parsed = InlineCode.of(html)
    assert parsed.inline_scripts == [], f"{where}: inline script {parsed.inline_scripts}"
    assert parsed.handlers == [], f"{where}: event handler attribute {parsed.handlers}"
    assert parsed.js_urls == [], f"{where}: javascript: URL {parsed.js_urls}"
    assert parsed.styles == [], f"{where}: style attribute {parsed.styles}"
    assert "<script>window.__xss" not in html and "<svg onload" not in html and "<img src=x" not in html, where
    return parsed


@pytest.mark.django_db
def test_every_page_shows_hostile_text_as_text():
    w = hostile_world()
    client = Client()
    client.force_login(w["manager"])
    pages = {}
    for route, name, callback, api in PAGE_ROUTES:
        url = fill(Endpoint(route=route, name=name, callback=callback, api=api), w["params"])
        response = client.get(url, HTTP_ACCEPT="text/html")
        if response.status_code != 200 or not response["Content-Type"].startswith("text/html"):
            continue
        pages[name] = assert_inert(response.content.decode(), f"GET {url}")
    review = client.get(reverse("review-item", args=[w["project"].pk, w["open"].pk]))
    assert review.status_code == 200
    pages["review-item"] = assert_inert(review.content.decode(), "review page")
    for name, fields in SHOWN.items():
        assert name in pages, f"{name} did not render"
        text = pages[name].all_text
        for field in fields:
            assert f"[{field}]" in text, f"{name} does not show the {field}"
    attributions = pages["review-item"].all_text
    assert "<script>window.__xss=1</script>" in attributions and "javascript:window.__xss=1" in attributions


@pytest.mark.django_db
def test_fragments_and_htmx_answers_show_hostile_text_as_text():
    w = hostile_world()
    client = Client()
    client.force_login(w["manager"])
    project = w["project"]
    for url in (reverse("project-stats", args=[project.pk]), reverse("models-fragment", args=[project.pk]),
                reverse("import-progress", args=[project.pk, w["job"].pk])):
        response = client.get(url, HTTP_HX_REQUEST="true")
        assert response.status_code == 200, url
        assert_inert(response.content.decode(), url)
    # a submit with an error re-renders the form with what was typed
    post = {"notes": hostile("typed notes"), "step-0-verdict": "agree", "step-0-reason": hostile("typed reason")}
    response = client.post(reverse("review-submit", args=[project.pk, w["open"].pk]), post, HTTP_HX_REQUEST="true")
    parsed = assert_inert(response.content.decode(), "review submit")
    assert "[typed notes]" in parsed.all_text and "[typed reason]" in parsed.all_text
    # a reviewer's decision with a hostile reason, shown back on the item
    decide = {f"label-{i}": "yes" for i in range(3)} | {"reason-0": hostile("decision reason"),
                                                        "notes": hostile("decision notes")}
    response = client.post(reverse("adjudicate", args=[project.pk, w["disputed"].pk]), decide, follow=True)
    assert response.status_code == 200
    assert_inert(response.content.decode(), "after adjudication")
    detail = client.get(reverse("item-detail", args=[project.pk, w["disputed"].pk])).content.decode()
    assert "[decision reason]" in assert_inert(detail, "item detail").all_text


@pytest.mark.django_db
def test_a_hostile_project_name_is_escaped_when_created_through_the_form():
    user = make_user("creator", is_superuser=True, is_staff=True)
    client = Client()
    client.force_login(user)
    response = client.post(reverse("project-create"),
                           {"name": hostile("form name")[:200], "kind": "lfm_trajectory", "answers_per_item": 1,
                            "lease_minutes": 30, "retrain_every": 0, "llm_label_weight": 0.5, "heldout_percent": 20,
                            "promote_margin": 0.0}, follow=True)
    assert response.status_code == 200
    assert "[form name]" in assert_inert(response.content.decode(), "new project").all_text
    assert "[form name]" in assert_inert(client.get(reverse("project-list")).content.decode(), "list").all_text


def test_plain_pages_have_no_inline_code(project):
    """The baseline of the checks above: ordinary data renders without any inline code."""
    make_items(project, count=1)
    manager = add_member(project, Role.MANAGER, "plain-manager")
    client = Client()
    client.force_login(manager)
    assert_inert(client.get(reverse("item-list", args=[project.pk])).content.decode(), "item list")
