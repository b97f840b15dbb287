"""Exports: every record of a project, streamed in constant memory.

A record is one live item with what the project knows about it: payload, latest
prediction, the submitted answers, the final label and where it all came from
(lineage). Items are streamed from one cursor (server-side on PostgreSQL, as
`QuerySet.iterator()` does) in chunks of EXPORT_CHUNK; for each chunk the
payloads, latest predictions, answers and finals come in one query each, so
memory stays flat and the number of queries grows with chunks, not items.
Formats: the core "jsonl" (the full record, one per line) and the kind's own
(`Kind.export_formats`, rows computed from the record).

The full-record JSONL never decodes the stored JSON: payloads, answers and final
labels are copied into the output as they are stored (orjson.Fragment).
"""

from __future__ import annotations

import csv
import dataclasses
import io
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from datetime import timezone as dt_timezone

import orjson
from django.contrib.auth import get_user_model
from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.models import Exists, OuterRef, Q
from django.http import StreamingHttpResponse
from django.utils import timezone
from django.utils.text import slugify

from .kinds.base import ExportFormat
from .models import Answer, Final, Item, ItemPayload, Prediction, Project

EXPORT_CHUNK = 2000
# Fetch the next chunk on a second connection while this one is written: None = on PostgreSQL only (the
# server works in its own process; measured 1.8x faster there), True = wherever it is safe, False = never.
EXPORT_PREFETCH: bool | None = None
OUTPUT_CHUNK_BYTES = 64 * 1024
EXPORTED_ANSWER_STATUSES = [Answer.Status.SUBMITTED, Answer.Status.REJECTED]

CORE_FORMATS = {
    "jsonl": ExportFormat(
        name="jsonl",
        label="Full records (JSONL)",
        extension="jsonl",
        content_type="application/x-ndjson",
        rows=lambda record: [record],
        description="One line per item: payload, latest prediction, submitted answers, final label and lineage.",
    ),
}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def _parse_moment(name: str, value: str) -> date | datetime:
    """A date (a whole UTC day) or an ISO 8601 date-time (naive means UTC)."""
    value = value.strip()
    try:
        if len(value) == 10:
            return date.fromisoformat(value)
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{name}: {value!r} is not a date; use YYYY-MM-DD (or an ISO 8601 date-time).") from None
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment, timezone.get_default_timezone())
    return moment


@dataclass(frozen=True)
class ExportFilters:
    """Which records to export.

    - final_only: only items with a final label.
    - since / until: only answers submitted and final labels decided in this range
      (dates are whole UTC days, both ends included); items with neither are left out.
    - annotator (a username): only items this user answered, and only this user's answers.
    """

    final_only: bool = False
    since: date | datetime | None = None
    until: date | datetime | None = None
    annotator: str | None = None

    @classmethod
    def from_params(cls, params) -> ExportFilters:
        """From a QueryDict (or any mapping of strings). Raises ValueError with a message for people."""
        for name in ("format", "final_only", "since", "until", "annotator"):
            if "\x00" in (params.get(name) or ""):
                raise ValueError(f"{name}: NUL characters (\\u0000) are not allowed.")
        raw = (params.get("final_only") or "").strip().lower()
        if raw in _TRUE:
            final_only = True
        elif raw in _FALSE:
            final_only = False
        else:
            raise ValueError(f"final_only: {raw!r} is not a yes/no value; use 1 or 0.")
        since = until = None
        if (params.get("since") or "").strip():
            since = _parse_moment("since", params.get("since"))
        if (params.get("until") or "").strip():
            until = _parse_moment("until", params.get("until"))
        for name, moment, end in (("since", since, False), ("until", until, True)):
            try:  # the ends of the calendar: a bound past 9999-12-31 or before year 1 in UTC
                if moment is not None:
                    _bound(moment, end=end).astimezone(dt_timezone.utc)
            except (OverflowError, ValueError):
                raise ValueError(f"{name}: {params.get(name).strip()!r} is out of range; "
                                 "use a date from 0001-01-02 to 9999-12-30.") from None
        if since is not None and until is not None and _bound(since, end=False) >= _bound(until, end=True):
            raise ValueError("since is after until: nothing can match.")
        annotator = (params.get("annotator") or "").strip() or None
        users = get_user_model()
        if annotator is not None and not users.objects.filter(**{users.USERNAME_FIELD: annotator}).exists():
            raise ValueError(f"annotator: there is no user called {annotator!r}.")
        return cls(final_only=final_only, since=since, until=until, annotator=annotator)

    def window(self) -> tuple[datetime | None, datetime | None]:
        """[start, end): the UTC bounds of since/until."""
        start = end = None
        if self.since is not None:
            start = _bound(self.since, end=False)
        if self.until is not None:
            end = _bound(self.until, end=True)
        return start, end

    @property
    def dated(self) -> bool:
        return self.since is not None or self.until is not None

    def as_params(self) -> dict[str, str]:
        out = {}
        if self.final_only:
            out["final_only"] = "1"
        if self.since is not None:
            out["since"] = self.since.isoformat()
        if self.until is not None:
            out["until"] = self.until.isoformat()
        if self.annotator:
            out["annotator"] = self.annotator
        return out


def _bound(value: date | datetime, *, end: bool) -> datetime:
    if isinstance(value, datetime):
        moment = value if timezone.is_aware(value) else timezone.make_aware(value, timezone.get_default_timezone())
        return moment + timedelta(microseconds=1) if end else moment
    moment = datetime.combine(value + timedelta(days=1) if end else value, time.min)
    return timezone.make_aware(moment, timezone.get_default_timezone())


def available_formats(project: Project) -> dict[str, ExportFormat]:
    """The core formats, then the kind's own (a kind cannot shadow a core name)."""
    out = dict(CORE_FORMATS)
    for name, fmt in project.kind_spec.export_formats.items():
        out.setdefault(name, fmt)
    return out


# --- reading records ----------------------------------------------------------------------------


def _answer_filter(filters: ExportFilters, start, end) -> Q:
    q = Q(status__in=EXPORTED_ANSWER_STATUSES, submitted_at__isnull=False)
    if filters.annotator:
        q &= Q(**{f"user__{get_user_model().USERNAME_FIELD}": filters.annotator})
    if start is not None:
        q &= Q(submitted_at__gte=start)
    if end is not None:
        q &= Q(submitted_at__lt=end)
    return q


def _final_filter(start, end) -> Q:
    q = Q()
    if start is not None:
        q &= Q(decided_at__gte=start)
    if end is not None:
        q &= Q(decided_at__lt=end)
    return q


def _items(project: Project, filters: ExportFilters, answer_q: Q, final_q: Q):
    qs = Item.objects.live().filter(project=project)
    has_answer = Exists(Answer.objects.filter(answer_q, item_id=OuterRef("pk")))
    has_final = Exists(Final.objects.filter(final_q, item_id=OuterRef("pk")))
    if filters.final_only:
        qs = qs.filter(has_final)
    if filters.annotator:
        qs = qs.filter(has_answer)
    if filters.dated and not filters.final_only and not filters.annotator:
        qs = qs.filter(has_answer | has_final)
    return qs.order_by("seq").values_list(
        "pk", "external_id", "seq", "state", "step_count", "created_at", "import_job_id", "import_job__filename"
    )


class _ChunkQueries:
    """The per-chunk queries, in SQL built once per export from the models' tables and columns.

    They are the hot path of an export: plain SQL with the chunk's ids inlined (integers read from
    the database) skips the ORM's per-value work, and JSON columns come back as stored text.
    """

    def __init__(self, filters: ExportFilters, start, end):
        q = connection.ops.quote_name
        user_model = get_user_model()
        users = q(user_model._meta.db_table)
        username = q(user_model._meta.get_field(user_model.USERNAME_FIELD).column)
        user_pk = q(user_model._meta.pk.column)

        def col(model, name, alias):
            return f"{alias}.{q(model._meta.get_field(name).column)}"

        def table(model, alias):
            return f"{q(model._meta.db_table)} {alias}"

        adapt = connection.ops.adapt_datetimefield_value
        self.payloads = (
            f"SELECT {col(ItemPayload, 'item', 'p')}, {col(ItemPayload, 'data', 'p')} FROM {table(ItemPayload, 'p')} "
            f"WHERE {col(ItemPayload, 'item', 'p')} IN (__IDS__)"
        )
        pred = lambda name, alias="p": col(Prediction, name, alias)  # noqa: E731
        # the latest prediction per item (as answers.latest_prediction orders them); a window function
        # is several times faster on PostgreSQL than a correlated subquery and works on SQLite too
        self.predictions = (
            f"SELECT item_id, model_version, uncertainty, created_at, data FROM ("
            f"SELECT {pred('item')} AS item_id, {pred('model_version')} AS model_version, "
            f"{pred('uncertainty')} AS uncertainty, {pred('created_at')} AS created_at, {pred('data')} AS data, "
            f"ROW_NUMBER() OVER (PARTITION BY {pred('item')} ORDER BY {pred('created_at')} DESC, {pred('id')} DESC) "
            f"AS latest FROM {table(Prediction, 'p')} WHERE {pred('item')} IN (__IDS__)) ranked WHERE latest = 1"
        )
        ans = lambda name: col(Answer, name, "a")  # noqa: E731
        where = [f"{ans('item')} IN (__IDS__)", f"{ans('status')} IN (%s, %s)", f"{ans('submitted_at')} IS NOT NULL"]
        self.answer_params = list(EXPORTED_ANSWER_STATUSES)
        if filters.annotator:
            where.append(f"u.{username} = %s")
            self.answer_params.append(filters.annotator)
        if start is not None:
            where.append(f"{ans('submitted_at')} >= %s")
            self.answer_params.append(adapt(start))
        if end is not None:
            where.append(f"{ans('submitted_at')} < %s")
            self.answer_params.append(adapt(end))
        self.answers = (
            f"SELECT {ans('item')}, {ans('id')}, u.{username}, {ans('status')}, {ans('submitted_at')}, "
            f"{ans('time_spent_ms')}, {ans('guidelines_version')}, {ans('model_version')}, r.{username}, "
            f"{ans('data')} FROM {table(Answer, 'a')} "
            f"JOIN {users} u ON u.{user_pk} = {ans('user')} LEFT JOIN {users} r ON r.{user_pk} = {ans('reviewed_by')} "
            f"WHERE {' AND '.join(where)} ORDER BY {ans('item')}, {ans('submitted_at')}, {ans('id')}"
        )
        fin = lambda name: col(Final, name, "f")  # noqa: E731
        where = [f"{fin('item')} IN (__IDS__)"]
        self.final_params = []
        if start is not None:
            where.append(f"{fin('decided_at')} >= %s")
            self.final_params.append(adapt(start))
        if end is not None:
            where.append(f"{fin('decided_at')} < %s")
            self.final_params.append(adapt(end))
        self.finals = (
            f"SELECT {fin('item')}, {fin('method')}, d.{username}, {fin('decided_at')}, {fin('data')} "
            f"FROM {table(Final, 'f')} LEFT JOIN {users} d ON d.{user_pk} = {fin('decided_by')} "
            f"WHERE {' AND '.join(where)}"
        )

    @staticmethod
    def run(sql: str, ids: str, params=()) -> list[tuple]:
        with connection.cursor() as cur:
            cur.execute(sql.replace("__IDS__", ids), params)
            return cur.fetchall()


def _aware(value):
    """Datetimes from a raw cursor: SQLite gives naive UTC ones."""
    if value is None or isinstance(value, str):
        return datetime.fromisoformat(value).replace(tzinfo=dt_timezone.utc) if value else None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt_timezone.utc)


def _chunks(project: Project, filters: ExportFilters, parts: frozenset[str] | None = None) -> Iterator[list[dict]]:
    """Lists of up to EXPORT_CHUNK records whose JSON fields are still the stored text. `parts`: which of
    "payload", "prediction", "answers" and "final" to read (None: all); the others are not queried and
    stay empty (None, or no answers)."""
    start, end = filters.window()
    answer_q = _answer_filter(filters, start, end)
    final_q = _final_filter(start, end)
    sql = _ChunkQueries(filters, start, end)
    project_block = {"id": project.pk, "name": project.name, "kind": project.kind,
                     "guidelines_version": project.guidelines_version}

    wants = (lambda name: True) if parts is None else parts.__contains__

    def fetch(rows):
        """The chunk's payloads, latest predictions, answers and finals: one query each."""
        ids = ",".join(str(int(r[0])) for r in rows)
        payloads = dict(sql.run(sql.payloads, ids)) if wants("payload") else {}
        predictions = {p[0]: p for p in sql.run(sql.predictions, ids)} if wants("prediction") else {}
        answers: dict[int, list] = {}
        for a in sql.run(sql.answers, ids, sql.answer_params) if wants("answers") else ():
            answers.setdefault(a[0], []).append({
                "id": a[1], "user": a[2], "status": a[3], "submitted_at": _aware(a[4]), "time_spent_ms": a[5],
                "guidelines_version": a[6], "model_version": a[7], "reviewed_by": a[8], "data": a[9],
            })
        finals = {f[0]: f for f in sql.run(sql.finals, ids, sql.final_params)} if wants("final") else {}
        return payloads, predictions, answers, finals

    def build(rows, related):
        payloads, predictions, answers, finals = related
        records = []
        for pk, external_id, seq, state, step_count, created_at, job_id, filename in rows:
            p = predictions.get(pk)
            f = finals.get(pk)
            item_answers = answers.get(pk, [])
            records.append({
                "id": pk,
                "external_id": external_id,
                "seq": seq,
                "state": state,
                "step_count": step_count,
                "payload": payloads.get(pk),
                "prediction": None if p is None else p[4],
                "answers": item_answers,
                "final": None if f is None else {
                    "method": f[1], "decided_by": f[2], "decided_at": _aware(f[3]), "data": f[4],
                },
                "lineage": {
                    "project": project_block,
                    "import_job": job_id,
                    "source_file": filename,
                    "imported_at": _aware(created_at),
                    "prediction": None if p is None else {
                        "model_version": p[1], "uncertainty": p[2], "created_at": _aware(p[3]),
                    },
                    "answer_model_versions": sorted({a["model_version"] for a in item_answers if a["model_version"]}),
                    "guidelines_versions": sorted({a["guidelines_version"] for a in item_answers}),
                },
            })
        return records

    # The items query is the ORM's (filters, joins), streamed like QuerySet.iterator() does (a server-side
    # cursor on PostgreSQL) but without the ORM's per-row work; its one datetime is made aware in build().
    items = _items(project, filters, answer_q, final_q)
    sql_text, params = items.query.get_compiler(using=items.db).as_sql()
    server_side = not connection.settings_dict.get("DISABLE_SERVER_SIDE_CURSORS")  # as QuerySet.iterator()
    prefetch = ThreadPoolExecutor(1, thread_name_prefix="export-prefetch") if _can_prefetch() else None
    try:
        with (connection.chunked_cursor() if server_side else connection.cursor()) as cur:
            cur.execute(sql_text, params)
            pending = None
            while True:
                rows = cur.fetchmany(EXPORT_CHUNK)
                if prefetch is None:
                    if not rows:
                        return
                    yield build(rows, fetch(rows))
                    continue
                # the next chunk's queries run on the prefetch thread's own connection while this
                # chunk is formatted and sent: the database and Python work at the same time
                upcoming = (rows, prefetch.submit(fetch, rows)) if rows else None
                if pending is not None:
                    yield build(pending[0], pending[1].result())
                if upcoming is None:
                    return
                pending = upcoming
    finally:
        if prefetch is not None:
            prefetch.submit(_close_thread_connection)
            prefetch.shutdown(wait=True)


def _can_prefetch() -> bool:
    """A second connection sees what this one sees only outside a transaction (tests wrap each test in
    one; so can callers) and not for an in-memory SQLite database. SQLite works inside this process, so
    it gains little from a second thread: by default only PostgreSQL prefetches."""
    if EXPORT_PREFETCH is False or connection.in_atomic_block:
        return False
    if EXPORT_PREFETCH is None and connection.vendor != "postgresql":
        return False
    name = str(connection.settings_dict.get("NAME") or "")
    return not (connection.vendor == "sqlite" and (":memory:" in name or "mode=memory" in name))


def _close_thread_connection() -> None:
    connections[DEFAULT_DB_ALIAS].close()


def _records(project: Project, filters: ExportFilters, *, decode: bool,
             reads: frozenset[str] | None = None) -> Iterator[dict]:
    """One record at a time. Its stored JSON is decoded (decode=True) or wrapped as orjson.Fragment to be
    copied into the output as it is. Decoding happens record by record, just before use, so only one
    decoded record is alive at a time (a whole decoded chunk would also make the garbage collector crawl).
    With `reads`, only those parts are read from the database and decoded; the others stay empty."""
    wrap = orjson.loads if decode else orjson.Fragment
    project_block = None
    for chunk in _chunks(project, filters, reads):
        for i, record in enumerate(chunk):
            chunk[i] = None
            if record["payload"] is not None:
                record["payload"] = wrap(record["payload"])
            if record["prediction"] is not None:
                record["prediction"] = wrap(record["prediction"])
            for answer in record["answers"]:
                answer["data"] = wrap(answer["data"])
            if record["final"] is not None:
                record["final"]["data"] = wrap(record["final"]["data"])
            if not decode:
                if project_block is None:
                    project_block = orjson.Fragment(orjson.dumps(record["lineage"]["project"]))
                record["lineage"]["project"] = project_block
            yield record


def iter_records(project: Project, filters: ExportFilters | None = None) -> Iterator[dict]:
    """Every exported record, decoded, in import order; reads EXPORT_CHUNK items at a time."""
    return _records(project, filters or ExportFilters(), decode=True)


# --- writing ------------------------------------------------------------------------------------


def is_csv(fmt: ExportFormat) -> bool:
    return fmt.header is not None or fmt.extension == "csv"


def stream_export(project: Project, fmt: str, filters: ExportFilters | None = None) -> Iterator[bytes]:
    """The export file as bytes chunks of about OUTPUT_CHUNK_BYTES. Raises ValueError for an unknown format."""
    formats = available_formats(project)
    if fmt not in formats:
        raise ValueError(f"Unknown export format {fmt!r}; this project offers: {', '.join(formats)}.")
    spec = formats[fmt]
    filters = filters or ExportFilters()
    if fmt in CORE_FORMATS:
        return _jsonl(_records(project, filters, decode=False), spec)
    if spec.final_only and not filters.final_only:
        filters = dataclasses.replace(filters, final_only=True)  # the other items give no rows
    records = _records(project, filters, decode=True, reads=spec.reads)
    return _csv(records, spec) if is_csv(spec) else _jsonl(records, spec)


def _jsonl(records, spec: ExportFormat) -> Iterator[bytes]:
    dumps, opt, rows_of = orjson.dumps, orjson.OPT_APPEND_NEWLINE, spec.rows
    buf: list[bytes] = []
    size = 0
    for record in records:
        for row in rows_of(record):
            line = dumps(row, option=opt)
            buf.append(line)
            size += len(line)
        if size >= OUTPUT_CHUNK_BYTES:
            yield b"".join(buf)
            buf, size = [], 0
    if buf:
        yield b"".join(buf)


def _csv(records, spec: ExportFormat) -> Iterator[bytes]:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if spec.header:
        writer.writerow(spec.header)
    for record in records:
        writer.writerows(spec.rows(record))
        if out.tell() >= OUTPUT_CHUNK_BYTES:
            yield out.getvalue().encode()
            out.seek(0)
            out.truncate()
    if out.tell():
        yield out.getvalue().encode()


def export_filename(project: Project, fmt: str) -> str:
    spec = available_formats(project)[fmt]
    name = slugify(project.name) or f"project-{project.pk}"
    return f"{name}-{fmt}-{timezone.now().date().isoformat()}.{spec.extension}"


def _in_async_server(request) -> bool:
    from django.core.handlers.asgi import ASGIRequest

    return isinstance(request, ASGIRequest)


async def _async_chunks(chunks: Iterator[bytes]):
    """Serve a sync generator under ASGI one chunk at a time, always in the request's database thread
    (Django would otherwise read a sync iterator whole before sending it)."""
    from asgiref.sync import sync_to_async

    step = sync_to_async(lambda: next(chunks, None), thread_sensitive=True)
    try:
        while True:
            chunk = await step()
            if chunk is None:
                return
            yield chunk
    finally:
        await sync_to_async(chunks.close, thread_sensitive=True)()


def export_response(project: Project, fmt: str, filters: ExportFilters | None = None, *,
                    request=None) -> StreamingHttpResponse:
    """A streaming download of the export. Pass the request so an ASGI server streams it too."""
    chunks = stream_export(project, fmt, filters)
    spec = available_formats(project)[fmt]
    content = _async_chunks(chunks) if request is not None and _in_async_server(request) else chunks
    content_type = spec.content_type
    if content_type.startswith("text/") and "charset" not in content_type:
        content_type += "; charset=utf-8"
    response = StreamingHttpResponse(content, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{export_filename(project, fmt)}"'
    response["X-Accel-Buffering"] = "no"
    response["Cache-Control"] = "no-store"
    return response
