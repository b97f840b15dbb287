"""API token authentication: DRF's TokenAuthentication with its lookup written out in SQL.

Every API call checks its token, and the ORM compiling the token-and-user join took about as much
CPU as the rest of a small request. The rule is DRF's: an unknown key is "Invalid token.", an
inactive user "User inactive or deleted.".
"""

from django.contrib.auth import get_user_model
from django.db import connection
from django.utils.translation import gettext_lazy as _
from rest_framework import authentication, exceptions
from rest_framework.authtoken.models import Token


class TokenAuthentication(authentication.TokenAuthentication):
    def authenticate_credentials(self, key):
        User = get_user_model()
        qn = connection.ops.quote_name
        columns = [f.column for f in User._meta.concrete_fields]
        sql = (f"SELECT {', '.join('u.' + qn(c) for c in columns)}, t.{qn('created')}"
               f" FROM {qn(User._meta.db_table)} u JOIN {qn(Token._meta.db_table)} t ON t.{qn('user_id')} = u.id"
               f" WHERE t.{qn('key')} = %s")
        with connection.cursor() as cursor:
            cursor.execute(sql, [key])
            row = cursor.fetchone()
        if row is None:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        user = User.from_db(connection.alias, columns, row[:-1])
        if not user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        token = Token(key=key, user=user, created=row[-1])
        token._state.adding, token._state.db = False, connection.alias
        return user, token
