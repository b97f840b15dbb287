"""Hand-written SQL on the review loop's hot path, read into model instances the way the ORM reads them.

Taking the next item and submitting an answer run about a dozen statements per answer, and compiling
each through the ORM cost more CPU than running it. The statements themselves live next to the rule
they implement (annotation/queue.py, annotation/answers.py, annotation/permissions.py); this module
gives them the column lists and turns rows into instances: every concrete field in order, values
through the same converters as the ORM's (JSON decoded, SQLite's datetimes parsed). Unlike
RawQuerySet it also converts extra columns by the field they come from, so one row can carry an item
with its payload and its newest prediction.
"""

from contextlib import contextmanager
from functools import cache

from django.db import connection


@cache
def qn(name: str) -> str:
    """`name` quoted as an identifier. Cached by name alone (the statements here are built on every
    call): PostgreSQL and SQLite, the databases the app runs on, quote names alike."""
    return connection.ops.quote_name(name)


@cache
def columns(model, alias: str = "") -> str:
    """Every concrete column of `model`, in field order, optionally prefixed with a table alias."""
    prefix = f"{alias}." if alias else ""
    return ", ".join(prefix + qn(f.column) for f in model._meta.concrete_fields)


def row_id(value) -> int | None:
    """`value` as an id some row could have (1 to 2**63 - 1), or None: a URL can name any number, and the
    database could not even compare one out of that range (SQLite) or rejects it (PostgreSQL)."""
    try:
        value = int(value)
    except (TypeError, ValueError):
        return None
    return value if 0 < value < 2**63 else None


@cache
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


def _apply(converters, values: list) -> list:
    """`values` (one row) with each converted position run through its converters, in place."""
    for i, funcs, expression in converters:
        for fn in funcs:
            values[i] = fn(values[i], expression, connection)
    return values


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
        values = _apply(converters, list(row))
        obj = model.from_db(connection.alias, None, values[:n])
        for name, value in zip(extra, values[n:]):
            setattr(obj, name, value)
        out.append(obj)
    return out


@cache
def joined(model, prefix: str) -> dict:
    """`extra` for `rows` naming every concrete field of another `model` read in the same row (its
    columns in field order, `columns(model, alias)`), each as `prefix + attname`."""
    return {f"{prefix}{f.attname}": f for f in model._meta.concrete_fields}


@cache
def _pk_position(model) -> int:
    return model._meta.concrete_fields.index(model._meta.pk)


def take_joined(obj, model, prefix: str):
    """Remove the `joined(model, prefix)` values from `obj` and return them as a `model` instance, or None
    when the join found no row (its primary key is NULL)."""
    values = [obj.__dict__.pop(name) for name in joined(model, prefix)]
    if values[_pk_position(model)] is None:
        return None
    return model.from_db(obj._state.db, None, values)


def first(model, sql: str, params, *, extra: dict | None = None):
    """The first instance `rows` reads, or None."""
    found = rows(model, sql, params, extra=extra)
    return found[0] if found else None


@cache
def _insert_sql(model, vendor: str, computed: tuple = (), source: str = "") -> tuple[str, tuple]:
    """(the INSERT, the fields whose values it takes as parameters). `computed`: (field name, SQL
    expression) pairs written instead of a parameter, over the FROM clause `source`."""
    meta = model._meta
    fields = tuple(f for f in meta.local_concrete_fields if f is not meta.auto_field)
    expressions = dict(computed)
    values = ", ".join(expressions.get(f.name, "%s") for f in fields)
    sql = f"INSERT INTO {table(model)} ({', '.join(qn(f.column) for f in fields)})"
    sql += f" SELECT {values} FROM {source}" if source else f" VALUES ({values})"
    if meta.auto_field is not None and connection.features.can_return_columns_from_insert:
        sql += f" RETURNING {qn(meta.auto_field.column)}"
    return sql, tuple(f for f in fields if f.name not in expressions)


def insert_statement(obj, *, computed: dict | None = None, source: str = "") -> tuple[str, list]:
    """The INSERT of a new instance as Model.save() would write it (field defaults, auto_now, JSON
    encoded), RETURNING its id where the database can, with SQL built once per model; for insert(), or
    to run inside another statement (annotation/answers.py writes a submit's rows in one).
    `computed` ({field name: SQL expression}) and `source` (a FROM clause): INSERT ... SELECT, those
    fields computed over `source` instead of taken from `obj`."""
    sql, fields = _insert_sql(type(obj), connection.vendor, tuple((computed or {}).items()), source)
    return sql, [f.get_db_prep_save(f.pre_save(obj, True), connection) for f in fields]


def insert(obj) -> None:
    """INSERT a new instance (insert_statement) and set its id. Sends no save signals: use it only for
    models nothing listens to (the answer and its audit event on the submit path)."""
    auto_field = type(obj)._meta.auto_field
    with connection.cursor() as cursor:
        cursor.execute(*insert_statement(obj))
        if auto_field is not None:
            pk = cursor.fetchone()[0] if connection.features.can_return_columns_from_insert else cursor.lastrowid
            setattr(obj, auto_field.attname, pk)
    saved(obj)


def saved(obj) -> None:
    """Mark an instance written by hand-made SQL as stored, as Model.save() does."""
    obj._state.adding, obj._state.db = False, connection.alias


@cache
def _update_sql(model, field_names: tuple, vendor: str) -> tuple[str, list]:
    meta = model._meta
    fields = [meta.get_field(name) for name in field_names]
    sql = (f"UPDATE {table(model)} SET {', '.join(qn(f.column) + ' = %s' for f in fields)}"
           f" WHERE {qn(meta.pk.column)} = %s")
    return sql, fields


def update_statement(obj, field_names) -> tuple[str, list]:
    """UPDATE the named fields of a saved instance by its primary key (Model.save(update_fields=...) without
    signals or the ORM's compiler), with SQL built once per model and fields."""
    sql, fields = _update_sql(type(obj), tuple(field_names), connection.vendor)
    return sql, [*(f.get_db_prep_save(f.pre_save(obj, False), connection) for f in fields), obj.pk]


def update(obj, field_names) -> None:
    """Run update_statement(obj, field_names)."""
    with connection.cursor() as cursor:
        cursor.execute(*update_statement(obj, field_names))


@contextmanager
def planned_each_run():
    """Statements run inside are not prepared (PostgreSQL with DATABASE_PREPARED_STATEMENTS): the server
    plans each run with its parameters and the tables' current size.

    For a statement whose best plan depends on how much data there is. A prepared statement keeps its
    generic plan until the next ANALYZE of its tables; planned while the answers table was nearly empty,
    the queue's candidate walk re-read every answer of the reviewer for each item it passed, and the
    claim grew quadratically with the reviewer's answers until autovacuum caught up."""
    connection.ensure_connection()
    raw = connection.connection
    threshold = getattr(raw, "prepare_threshold", None) if connection.vendor == "postgresql" else None
    if threshold is None:
        yield
        return
    raw.prepare_threshold = None
    try:
        yield
    finally:
        raw.prepare_threshold = threshold
