"""API token authentication: DRF's TokenAuthentication with its lookup written out in SQL.

Every API call checks its token, and the ORM compiling the token-and-user join took about as much
CPU as the rest of a small request. The rule is DRF's: an unknown key is "Invalid token.", an
inactive user "User inactive or deleted.".
"""

from django.contrib.auth import get_user_model
from django.utils.translation import gettext_lazy as _
from rest_framework import authentication, exceptions
from rest_framework.authtoken.models import Token

from .. import rawsql


class TokenAuthentication(authentication.TokenAuthentication):
    def authenticate_credentials(self, key):
        User = get_user_model()
        sql = (f"SELECT {rawsql.columns(User, 'u')}, t.{rawsql.qn('created')} FROM {rawsql.table(User)} u"
               f" JOIN {rawsql.table(Token)} t ON t.{rawsql.qn('user_id')} = u.id WHERE t.{rawsql.qn('key')} = %s")
        user = rawsql.first(User, sql, [key], extra={"token_created": Token._meta.get_field("created")})
        if user is None:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        if not user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        token = Token(key=key, user=user, created=user.__dict__.pop("token_created"))
        token._state.adding, token._state.db = False, user._state.db
        return user, token
