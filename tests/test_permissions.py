"""The permission matrix, generated from the URL configuration.

Every URL under a project (`<int:project_id>`), pages and API alike, is requested
by an anonymous visitor, a non-member, and a member of each role. What a view
needs is read from the view itself: `required_capability` on the page view (set by
annotation.permissions.project_view) or on the API view class (a capability, or a
dict HTTP method -> capability). A new URL without a declared capability, or with
a path parameter this file cannot fill, fails the suite.

Expected: anonymous -> login redirect (pages) or 401/403 (API); non-member -> 404;
a member whose role lacks the capability -> 403; a member who has it -> anything
but 401/403/404 (2xx/3xx, or a 4xx that shows the request reached the view, such as
400 for an empty form or 405 for a POST-only page requested with GET).
"""

import asyncio
import re
from dataclasses import dataclass

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.db import connections
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, resolve, reverse
from django.urls.resolvers import RegexPattern, RoutePattern

from annotation import answers
from annotation.models import Answer, ImportJob, Item, Membership, ModelVersion, Role, TrainingRun
from annotation.permissions import CAPABILITIES
from feedback_app.asgi import application

from .factories import add_member, full_answer, make_items, make_project, make_user

ROLES = ["anonymous", "outsider", Role.VIEWER, Role.ANNOTATOR, Role.REVIEWER, Role.MANAGER]
REACHED_VIEW = {400, 405, 409, 415, 422}  # the request got past the permission check
API_METHODS = ("get", "post", "put", "patch", "delete")
_PARAM = re.compile(r"<(?:(?P<converter>[^>:]+):)?(?P<name>[^>]+)>")


# --- walking the URL configuration ----------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    route: str  # full route with converters, e.g. "api/projects/<int:project_id>/items/<int:item_id>/"
    name: str
    callback: object
    api: bool

    @property
    def label(self) -> str:
        return self.name or self.route


def _walk(patterns, prefix=""):
    for p in patterns:
        if isinstance(p, URLResolver):
            yield from _walk(p.url_patterns, prefix + _route_of(p.pattern))
        elif isinstance(p, URLPattern):
            yield prefix + _route_of(p.pattern), p


def _route_of(pattern) -> str:
    if isinstance(pattern, RoutePattern):
        return str(pattern._route)
    if isinstance(pattern, RegexPattern):
        return "<regex>" + pattern._regex
    return str(pattern)


def project_endpoints() -> list[Endpoint]:
    found = []
    for route, p in _walk(get_resolver().url_patterns):
        if "project_id" not in route:
            continue
        callback = p.callback
        api = hasattr(callback, "cls")  # a DRF view (APIView.as_view sets .cls)
        found.append(Endpoint(route=route, name=p.name or "", callback=callback, api=api))
    return found


ENDPOINTS = project_endpoints()


def api_methods(endpoint: Endpoint) -> list[str]:
    cls = endpoint.callback.cls
    actions = getattr(endpoint.callback, "actions", None)  # viewsets map methods to actions
    if actions:
        return sorted(m for m in actions if m in API_METHODS)
    return [m for m in API_METHODS if m in cls.http_method_names and hasattr(cls, m)]


def cases():
    out = []
    for ep in ENDPOINTS:
        methods = api_methods(ep) if ep.api and not ep.route.startswith("<regex>") else [None]
        for method in methods:
            for role in ROLES:
                label = f"{ep.label}{'-' + method.upper() if method else ''}-{role}"
                out.append(pytest.param(ep, method, role, id=label))
    return out


# --- what a view needs -------------------------------------------------------------------------


def required_capability(endpoint: Endpoint, method: str | None) -> str:
    if endpoint.api:
        owner = endpoint.callback.cls
        if "required_capability" not in {k for c in owner.__mro__ for k in vars(c)}:
            pytest.fail(f"API view {owner.__name__} ({endpoint.route}) declares no required_capability")
        required = owner.required_capability
    else:
        if not hasattr(endpoint.callback, "required_capability"):
            pytest.fail(
                f"page {endpoint.label} ({endpoint.route}) has no required_capability: "
                "wrap it in annotation.permissions.project_view(capability)"
            )
        required = endpoint.callback.required_capability
    if required is None:
        pytest.fail(f"{endpoint.label} ({endpoint.route}) is inside a project but requires no capability")
    if isinstance(required, dict):
        key = (method or "get").upper()
        if key not in required:
            pytest.fail(f"{endpoint.label}: required_capability has no entry for {key} ({sorted(required)})")
        required = required[key]
    known = set().union(*CAPABILITIES.values())
    assert required in known, f"{endpoint.label}: unknown capability {required!r}"
    return required


# --- the world every URL is requested in --------------------------------------------------------


@pytest.fixture
def world(db):
    """A project with a member of each role and one object of every kind a project URL can name."""
    project = make_project(name="Matrix", answers_per_item=2)
    users = {role: add_member(project, role, f"m-{role}") for role in (Role.VIEWER, Role.ANNOTATOR, Role.REVIEWER,
                                                                       Role.MANAGER)}
    users["outsider"] = make_user("m-outsider")
    first, second = add_member(project, Role.ANNOTATOR, "m-first"), add_member(project, Role.ANNOTATOR, "m-second")
    target = Membership.objects.get(project=project, user=second)
    disputed, *_open = make_items(project, count=3, n_steps=3)
    answers.submit(disputed, first, full_answer(disputed, "agree"))
    answers.submit(disputed, second, full_answer(disputed, "disagree"))
    disputed.refresh_from_db()
    assert disputed.state == Item.State.DONE  # in the disagreement queue
    job = ImportJob.objects.create(project=project, created_by=users[Role.MANAGER], filename="m.jsonl",
                                   path="imports/m.jsonl", status=ImportJob.Status.SUCCEEDED)
    run = TrainingRun.objects.create(project=project, status=TrainingRun.Status.SUCCEEDED)
    version = ModelVersion.objects.create(project=project, version="matrix-version")
    params = {
        "project_id": project.pk,
        "item_id": disputed.pk,
        "answer_id": Answer.objects.get(item=disputed, user=first).pk,
        "membership_id": target.pk,
        "job_id": job.pk,
        "import_id": job.pk,
        "import_job_id": job.pk,
        "run_id": run.pk,
        "version_id": version.pk,
    }
    return {"project": project, "users": users, "params": params}


def fill(endpoint: Endpoint, params: dict) -> str:
    if endpoint.route.startswith("<regex>"):
        pytest.fail(f"{endpoint.label}: regex route {endpoint.route!r} under a project; use path() converters "
                    "so the permission matrix can fill it")

    def value(m):
        name = m.group("name")
        if name not in params:
            pytest.fail(f"{endpoint.label} ({endpoint.route}) has a path parameter {name!r} that "
                        "tests/test_permissions.py does not know: add an object for it to the `world` fixture")
        return str(params[name])

    url = "/" + _PARAM.sub(value, endpoint.route)
    match = resolve(url)
    assert match.func is endpoint.callback, f"{url} resolves to another view ({match.func}): a shadowed route"
    return url


def request(client: Client, method: str, url: str, api: bool):
    if api:
        if method == "get":
            return client.get(url, HTTP_ACCEPT="application/json")
        return client.generic(method.upper(), url, data="{}", content_type="application/json",
                              HTTP_ACCEPT="application/json")
    return getattr(client, method)(url)


def consume(response):
    """Run a streamed body to the end (the test client closes the response when it is exhausted)."""
    if getattr(response, "streaming", False):
        b"".join(response.streaming_content)
    return response


# --- the matrix -----------------------------------------------------------------------------------


def test_the_matrix_covers_the_project_urls():
    names = {ep.name for ep in ENDPOINTS}
    for expected in ("project-dashboard", "item-detail", "project-members", "member-remove", "disagreement-list",
                     "adjudicate", "answer-review"):
        assert expected in names, f"{expected} is missing from the walk of the URL configuration"
    assert all("project_id" in ep.route for ep in ENDPOINTS)


@pytest.mark.parametrize("endpoint, method, role", cases())
def test_permission_matrix(world, endpoint, method, role):
    capability = required_capability(endpoint, method)
    url = fill(endpoint, world["params"])
    client = Client()
    if role != "anonymous":
        client.force_login(world["users"][role])

    if endpoint.api:
        response = consume(request(client, method, url, api=True))
    else:
        # Pages answer GET; POST-only pages (require_POST) answer 405 to GET before any
        # permission check, so they are requested again with POST.
        response = consume(request(client, "get", url, api=False))
        method = "get"
        if response.status_code == 405:
            method = "post"
            response = consume(request(client, "post", url, api=False))

    where = f"{method.upper()} {url} as {role} (needs {capability})"
    status = response.status_code
    if role == "anonymous":
        if endpoint.api:
            assert status in (401, 403), f"{where}: {status}"
        else:
            assert status == 302, f"{where}: {status}"
            assert response["Location"].startswith(reverse(settings.LOGIN_URL)), f"{where}: {response['Location']}"
    elif role == "outsider":
        assert status == 404, f"{where}: {status}, a non-member must not learn that the project exists"
    elif capability not in CAPABILITIES[role]:
        assert status == 403, f"{where}: {status}"
    else:
        assert status not in (401, 403, 404), f"{where}: {status}"
        assert status < 400 or status in REACHED_VIEW, f"{where}: {status}"


def test_a_site_admin_acts_as_a_manager_without_membership(world):
    admin = make_user("m-admin", is_superuser=True, is_staff=True)
    client = Client()
    client.force_login(admin)
    project = world["project"]
    for name in ("project-members", "disagreement-list", "project-audit"):
        assert client.get(reverse(name, args=[project.pk])).status_code == 200


# --- the websocket -------------------------------------------------------------------------------


async def _connect(project_id, user):
    comm = WebsocketCommunicator(application, f"/ws/projects/{project_id}/live/",
                                 headers=[(b"origin", b"http://localhost")])
    if user is not None:
        comm.scope["user"] = user
    try:
        connected, code = await comm.connect(timeout=5)
        if connected:
            first = await comm.receive_from(timeout=5)
            await comm.disconnect()
            return True, first
        return False, code
    finally:
        # The consumer's queries ran in asgiref's worker thread: close its connection there,
        # or it outlives the test and blocks dropping the test database.
        await sync_to_async(connections.close_all)()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("role", [Role.VIEWER, Role.ANNOTATOR, Role.REVIEWER, Role.MANAGER])
def test_members_connect_to_the_live_socket(role):
    project = make_project(name="Live")
    user = add_member(project, role)
    connected, first = asyncio.run(_connect(project.pk, user))
    assert connected
    assert 'id="stat-answers"' in first


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("who", ["anonymous", "outsider", "member of another project"])
def test_others_are_refused_by_the_live_socket(who):
    from django.contrib.auth.models import AnonymousUser

    project = make_project(name="Live")
    add_member(project, Role.VIEWER)
    if who == "anonymous":
        user = AnonymousUser()
    elif who == "outsider":
        user = make_user()
    else:
        user = add_member(make_project(name="Elsewhere"), Role.MANAGER)
    connected, code = asyncio.run(_connect(project.pk, user))
    assert not connected
    assert code == 4403


@pytest.mark.django_db(transaction=True)
def test_the_live_socket_without_a_session_is_refused():
    """No user in the scope at all: the auth middleware makes it anonymous."""
    project = make_project(name="Live")
    connected, code = asyncio.run(_connect(project.pk, None))
    assert not connected
    assert code == 4403
