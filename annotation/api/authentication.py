"""API token authentication: DRF's TokenAuthentication with its lookup written out in SQL.

Every API call checks its token, and the ORM compiling the token-and-user join took about as much
CPU as the rest of a small request. The rule is DRF's: an unknown key is "Invalid token.", an
inactive user "User inactive or deleted.".

A call to a view that checks a capability in the project named by its URL (ProjectCapability) needs
the caller's membership right after the token: the same statement reads it, and the project, and
leaves them where get_project_for looks first (annotation.permissions.remember_membership). A
malformed project id in the URL is left to get_project_for, which answers it.
"""

from django.contrib.auth import get_user_model
from django.utils.translation import gettext_lazy as _
from rest_framework import authentication, exceptions
from rest_framework.authtoken.models import Token

from .. import rawsql
from ..models import Membership, Project
from ..permissions import remember_membership
from .permissions import capability_for


def _url_project_id(request) -> int | None:
    """The project id in the URL of a view that checks a capability in it, if it is a valid id."""
    context = getattr(request, "parser_context", None) or {}
    view = context.get("view")
    if view is None or capability_for(view, request.method) is None:
        return None
    return rawsql.row_id(context.get("kwargs", {}).get(getattr(view, "project_url_kwarg", "project_id")))


class TokenAuthentication(authentication.TokenAuthentication):
    project_id: int | None = None

    def authenticate(self, request):
        # DRF makes one authenticator per request: the project id can wait here for authenticate_credentials
        self.project_id = _url_project_id(request)
        return super().authenticate(request)

    def authenticate_credentials(self, key):
        User = get_user_model()
        extra = {"token_created": Token._meta.get_field("created")}
        sql = f"SELECT {rawsql.columns(User, 'u')}, t.{rawsql.qn('created')}"
        joins, params = "", [key]
        if self.project_id is not None:
            sql += f", m.{rawsql.qn('role')}, {rawsql.columns(Project, 'p')}"
            extra.update({"member_role": None, **rawsql.joined(Project, "project_")})
            joins = (f" LEFT JOIN {rawsql.table(Membership)} m ON m.user_id = u.id AND m.project_id = %s"
                     f" LEFT JOIN {rawsql.table(Project)} p ON p.id = m.project_id")
            params = [self.project_id, key]
        sql += (f" FROM {rawsql.table(User)} u JOIN {rawsql.table(Token)} t ON t.{rawsql.qn('user_id')} = u.id"
                f"{joins} WHERE t.{rawsql.qn('key')} = %s")
        user = rawsql.first(User, sql, params, extra=extra)
        if user is None:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        if not user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        if self.project_id is not None:
            role = user.__dict__.pop("member_role")
            project = rawsql.take_joined(user, Project, "project_")
            if not user.is_superuser:  # site admins are managers everywhere (role_of), members or not
                if project is not None:
                    project.member_role = role
                remember_membership(user, self.project_id, project)
        token = Token(key=key, user=user, created=user.__dict__.pop("token_created"))
        token._state.adding, token._state.db = False, user._state.db
        return user, token
