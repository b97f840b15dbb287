"""Who may do what in a project. One table of capabilities per role, used by pages, API and websockets.

A user who is not a member of a project gets 404 for everything in it, so the
existence of other projects does not leak. A member without the capability gets 403.
Site admins (superusers) act as managers everywhere.
"""

from functools import wraps

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import get_object_or_404

from . import rawsql
from .models import Membership, Project, Role

VIEW = "view"  # dashboard, items, final labels
ANNOTATE = "annotate"  # take items from the queue, answer them
REVIEW = "review"  # see everyone's answers, adjudicate, accept or reject answers
MANAGE = "manage"  # settings, members, imports, exports, models, audit log

CAPABILITIES = {
    Role.MANAGER: {VIEW, ANNOTATE, REVIEW, MANAGE},
    Role.REVIEWER: {VIEW, ANNOTATE, REVIEW},
    Role.ANNOTATOR: {VIEW, ANNOTATE},
    Role.VIEWER: {VIEW},
}


def _per_request(user, name: str) -> dict:
    """A dict cached on the user object (one per request) under `name`, made empty on first use."""
    cache = getattr(user, name, None)
    if cache is None:
        cache = {}
        setattr(user, name, cache)
    return cache


def role_of(user, project, *, fresh: bool = False) -> str | None:
    """The user's role in the project, or None. Cached on the user object for one request;
    long-lived holders (websockets) pass fresh=True."""
    if not getattr(user, "is_authenticated", False):
        return None
    if user.is_superuser:
        return Role.MANAGER
    cache = _per_request(user, "_project_roles")
    pid = project.pk if isinstance(project, Project) else int(project)
    if fresh or pid not in cache:
        cache[pid] = Membership.objects.filter(project_id=pid, user=user).values_list("role", flat=True).first()
    return cache[pid]


def can(user, project, capability: str, *, fresh: bool = False) -> bool:
    role = role_of(user, project, fresh=fresh)
    return role is not None and capability in CAPABILITIES[role]


def capabilities(user, project) -> set[str]:
    role = role_of(user, project)
    return set(CAPABILITIES[role]) if role else set()


def _member_project(project_id: int, user_id: int) -> Project | None:
    """The project with the user's role as `member_role`, or None for a non-member. Written out in SQL:
    every project page and API call runs it, and compiling it through the ORM cost more than running it."""
    sql = (f"SELECT {rawsql.columns(Project, 'p')}, m.{rawsql.qn('role')} FROM {rawsql.table(Project)} p"
           f" JOIN {rawsql.table(Membership)} m ON m.project_id = p.id WHERE p.id = %s AND m.user_id = %s")
    return rawsql.first(Project, sql, [project_id, user_id], extra={"member_role": None})


def remember_membership(user, project_id: int, project: Project | None) -> None:
    """Note what _member_project read for this request: `project` with the user's `member_role`, or None
    for a non-member. The role is cached like role_of's; the project is handed out once, to the next
    get_project_for (the API's token lookup reads both in the same statement as the token)."""
    _per_request(user, "_project_roles")[project_id] = project.member_role if project is not None else None
    if project is not None:
        _per_request(user, "_member_projects")[project_id] = project


def get_project_for(user, project_id, capability: str) -> Project:
    """The project if the user may do `capability` in it; 404 for non-members, 403 for members who may not."""
    project_id = rawsql.row_id(project_id)
    if project_id is None:
        raise Http404("No such project")
    cache = getattr(user, "_project_roles", None)
    if (getattr(user, "is_authenticated", False) and not user.is_superuser
            and (cache is None or project_id not in cache)):
        # The project and the user's role in it in one query (the role is cached for the rest of the request).
        remember_membership(user, project_id, _member_project(project_id, user.pk))
    role = role_of(user, project_id)
    if role is None:
        raise Http404("No such project")
    if capability not in CAPABILITIES[role]:
        raise PermissionDenied(f"Your role ({role}) may not do this.")
    project = getattr(user, "_member_projects", {}).pop(project_id, None)
    return project if project is not None else get_object_or_404(Project, pk=project_id)


def visible_projects(user):
    if user.is_superuser:
        return Project.objects.all()
    return Project.objects.filter(memberships__user=user)


def project_view(capability: str):
    """Decorator for page views taking `project_id`: logs in, checks role, passes `project`."""

    def decorator(view):
        @login_required
        @wraps(view)
        def wrapper(request, project_id, *args, **kwargs):
            project = get_project_for(request.user, project_id, capability)
            request.project_role = role_of(request.user, project)
            request.project_caps = CAPABILITIES[request.project_role]
            return view(request, project, *args, **kwargs)

        wrapper.required_capability = capability
        return wrapper

    return decorator
