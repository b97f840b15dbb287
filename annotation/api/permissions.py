"""How API views say what they need, and the check that enforces it.

Every API view class carries `required_capability`:
- None for endpoints outside a project (token, project list, kinds);
- a capability string (annotation.permissions.VIEW/ANNOTATE/REVIEW/MANAGE) for the whole view;
- a dict HTTP method -> capability where methods differ (GET "view", PATCH "manage").

The check uses annotation.permissions.get_project_for, so the API answers exactly
like the pages: 401 for anonymous callers, 404 for non-members (the project's
existence does not leak), 403 for members whose role lacks the capability.
"""

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from rest_framework import exceptions
from rest_framework.permissions import BasePermission

from ..permissions import CAPABILITIES, VIEW, get_project_for, role_of


def capability_for(view, method: str) -> str | None:
    """The capability `view` needs for `method` (None: no project check)."""
    required = getattr(view, "required_capability", None)
    if required is None or isinstance(required, str):
        return required
    method = method.upper()
    if method in required:
        return required[method]
    if method == "HEAD" and "GET" in required:
        return required["GET"]
    # OPTIONS, or a method the view does not answer: members only (then 200 or 405).
    return VIEW


class ProjectCapability(BasePermission):
    """Resolve the project from the URL and check the caller's role; sets view.project."""

    def has_permission(self, request, view):
        capability = capability_for(view, request.method)
        if capability is None:
            return True
        project_id = view.kwargs.get(getattr(view, "project_url_kwarg", "project_id"))
        try:
            project = get_project_for(request.user, project_id, capability)
        except Http404:
            raise exceptions.NotFound("No such project.") from None
        except DjangoPermissionDenied as exc:
            raise exceptions.PermissionDenied(str(exc) or None) from None
        view.project = project
        view.project_role = role_of(request.user, project)
        view.project_caps = CAPABILITIES[view.project_role]
        return True
