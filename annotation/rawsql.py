"""Hand-written SQL on the review loop's hot path, read into model instances the way the ORM reads them.

Taking the next item and submitting an answer run about a dozen statements per answer. Compiling
each through the ORM, or reading it through RawQuerySet (which maps the cursor's columns to fields on
every call), cost more CPU than running it. The statements themselves live next to the rule they
implement (annotation/queue.py, annotation/answers.py, annotation/permissions.py); this module gives
them the column lists and turns rows into instances: every concrete field in order, values through the
same converters as the ORM's (JSON decoded, SQLite's datetimes parsed).
"""

from functools import cache

from django.db import connection


def qn(name: str) -> str:
    return connection.ops.quote_name(name)


@cache
def _column_list(model, alias: str) -> str:
    prefix = f"{alias}." if alias else ""
    return ", ".join(prefix + connection.ops.quote_name(f.column) for f in model._meta.concrete_fields)


def columns(model, alias: str = "") -> str:
    """Every concrete column of `model`, in field order, optionally prefixed with a table alias."""
    return _column_list(model, alias)


def table(model) -> str:
    return qn(model._meta.db_table)


def select(model, where: str, tail: str = "") -> str:
    """SELECT every column of `model` FROM its table WHERE `where` (then `tail`: ORDER BY, LIMIT, FOR UPDATE)."""
    return f"SELECT {columns(model)} FROM {table(model)} WHERE {where}{tail}"


@cache
def _converted(fields: tuple, vendor: str) -> tuple:
    """(position, column expression) of the fields whose values the database backend or the field
    converts (on PostgreSQL: JSON; on SQLite also datetimes, booleans, decimals)."""
    out = []
    for i, field in enumerate(fields):
        if field is None:
            continue
        expression = field.get_col(field.model._meta.db_table)
        if connection.ops.get_db_converters(expression) or expression.get_db_converters(connection):
            out.append((i, expression))
    return tuple(out)


def _converters(fields: tuple) -> list[tuple[int, list, object]]:
    # the converters themselves are bound to this request's connection: looked up each time
    return [(i, connection.ops.get_db_converters(expression) + expression.get_db_converters(connection), expression)
            for i, expression in _converted(fields, connection.vendor)]


def rows(model, sql: str, params, *, extra: dict | None = None) -> list:
    """Run `sql`, whose columns are every concrete field of `model` in order (`columns(model)`) and then
    one column per name in `extra` ({attribute name: the model field it comes from, for its
    converters, or None}), and return the instances, each extra value set as an attribute."""
    extra = extra or {}
    fields = (*model._meta.concrete_fields, *extra.values())
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        data = cursor.fetchall()
    if not data:
        return []
    converters = _converters(fields)
    n = len(model._meta.concrete_fields)
    out = []
    for row in data:
        values = list(row)
        for i, funcs, expression in converters:
            for convert in funcs:
                values[i] = convert(values[i], expression, connection)
        obj = model.from_db(connection.alias, None, values[:n])
        for name, value in zip(extra, values[n:]):
            setattr(obj, name, value)
        out.append(obj)
    return out


def first(model, sql: str, params, *, extra: dict | None = None):
    """The first instance `rows` reads, or None."""
    found = rows(model, sql, params, extra=extra)
    return found[0] if found else None
