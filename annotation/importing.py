"""Imports: a file of items becomes Item, ItemPayload and Prediction rows, all or nothing.

The file is read as a stream (gzip, bzip2 and xz are recognised by their magic
bytes and decompressed on the fly). It is JSON Lines (one value per line, blank
lines skipped) or one JSON document: a single object (for example one
pretty-printed LFM rollout) or an array of objects; a document is parsed whole,
up to IMPORT_MAX_DOCUMENT_BYTES. Every value goes through the project's kind
(`Kind.parse_line`). Lines are at most MAX_LINE_BYTES; a value nested deeper
than MAX_JSON_DEPTH arrays and objects fails its line.

Rows are written in batches, each in its own transaction, as `state=staged`:
queues, lists, counts and exports only see `Item.objects.live()`, so a file
being imported is invisible. When the whole file is valid, one UPDATE turns its
staged rows open. At the first invalid line writing stops; the rest of the file
is still read so that the job reports every error (the first 100 are kept),
then the staged rows are deleted. Nothing of a failed file is ever visible.

Writing uses the bulk path of each database: COPY on PostgreSQL, executemany
with JSON serialised by orjson on SQLite. Validation (the kind's pydantic
models) costs more than writing, so a large file is parsed by forked parser
processes (IMPORT_PARSE_PROCESSES, default: one per CPU up to 4) while this
process writes; results come back in file order.
"""

from __future__ import annotations

import bz2
import gzip
import io
import logging
import lzma
import multiprocessing
import os
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import orjson
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from .kinds.base import ImportLineError, LineError
from .models import AuditEvent, ImportJob, Item, ItemPayload, Prediction, Project

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 32 * 1024 * 1024
MAX_JSON_DEPTH = 64  # arrays and objects inside each other, per item (and per API request body)
MAX_DOCUMENT_BYTES = getattr(settings, "IMPORT_MAX_DOCUMENT_BYTES", 128 * 1024 * 1024)
MAX_STORED_ERRORS = 100
BATCH_ITEMS = 2000
BATCH_BYTES = 16 * 1024 * 1024
COPY_CHUNK_BYTES = 1024 * 1024
PROGRESS_EVERY_S = 1.0
DELETE_CHUNK = 2000
PARSE_CHUNK_LINES = 500
PARSE_CHUNK_BYTES = 4 * 1024 * 1024
PARALLEL_MIN_BYTES = 8 * 1024 * 1024  # smaller files parse in-process: starting processes costs more
ANALYZE_MIN_ITEMS = 10_000  # PostgreSQL: refresh planner statistics after an import this large

FORMATS = {
    "auto": "Detect: JSON Lines, or one JSON document (an object or an array of objects)",
    "jsonl": "JSON Lines: one item per line",
    "json": "One JSON document: an object, or an array of objects",
}

_PG_LOCK_NAMESPACE = 0x1F0E  # pg_advisory_xact_lock(namespace, project_id) serialises seq reservations


class ImportRejected(Exception):
    """An upload that cannot become an import job (too large, empty, unknown format)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class _FileError(Exception):
    """A problem with the file as a whole (compression, document size), reported at a line."""

    def __init__(self, message: str, line: int = 0, field: str = "(file)"):
        super().__init__(message)
        self.error = LineError(line, field, message)


class _Cancelled(Exception):
    """The job stopped being RUNNING under us (marked failed as stale)."""


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} bytes"  # pragma: no cover


# --- creating a job --------------------------------------------------------------


def _check_format(project: Project, fmt: str) -> str:
    fmt = (fmt or "auto").strip().lower()
    if fmt in FORMATS:
        return fmt
    if fmt in project.kind_spec.import_formats:
        return "auto"  # a kind's content format (e.g. rollouts): the container is detected
    known = ", ".join(list(FORMATS) + list(project.kind_spec.import_formats))
    raise ImportRejected(f"Unknown import format {fmt!r}; use one of: {known}.")


def _upload_chunks(fileobj, size: int = COPY_CHUNK_BYTES) -> Iterator[bytes]:
    if hasattr(fileobj, "chunks"):
        yield from fileobj.chunks(size)
        return
    while True:
        chunk = fileobj.read(size)
        if not chunk:
            return
        yield chunk


def _too_big(limit: int) -> str:
    return (
        f"The file is larger than the import limit of {human_bytes(limit)}. "
        "Compress it (gzip, bzip2 or xz) or split it into several files."
    )


def create_import_job(project: Project, user, fileobj, filename: str, fmt: str = "auto") -> ImportJob:
    """Store the upload under IMPORT_DIR (in chunks), create the job and queue its task after commit."""
    fmt = _check_format(project, fmt)
    limit = settings.IMPORT_MAX_BYTES
    declared = getattr(fileobj, "size", None)
    if isinstance(declared, int) and declared > limit:
        raise ImportRejected(_too_big(limit))
    import_dir = Path(settings.IMPORT_DIR)
    import_dir.mkdir(parents=True, exist_ok=True)
    dest = import_dir / uuid.uuid4().hex
    written = 0
    try:
        with open(dest, "xb") as out:
            for chunk in _upload_chunks(fileobj):
                written += len(chunk)
                if written > limit:
                    raise ImportRejected(_too_big(limit))
                out.write(chunk)
        if written == 0:
            raise ImportRejected("The file is empty.")
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    try:
        stored = str(dest.relative_to(Path(settings.DATA_DIR)))
    except ValueError:
        stored = str(dest)
    name = Path(str(filename or "upload")).name[:255] or "upload"
    with transaction.atomic():
        job = ImportJob.objects.create(
            project=project,
            created_by=user if getattr(user, "is_authenticated", False) else None,
            filename=name,
            path=stored,
            format=fmt,
            size_bytes=written,
        )
        job_id = job.pk
        transaction.on_commit(lambda: _enqueue(job_id))
    return job


def _enqueue(job_id: int) -> None:
    from .tasks import run_import_task

    try:
        run_import_task.enqueue(job_id)
    except Exception as exc:  # noqa: BLE001 - the job must not wait forever for a task that was never queued
        log.exception("could not queue import job %s", job_id)
        _finish_failed(job_id, [LineError(0, "(file)", f"The import could not be queued: {exc}")], 1)
        _remove_upload(ImportJob.objects.get(pk=job_id))


def import_path(project: Project, user, path, fmt: str = "auto", *, on_progress: Callable | None = None) -> ImportJob:
    """Import a file already on this machine, synchronously (the command line). The file is left in place."""
    fmt = _check_format(project, fmt)
    path = Path(path).resolve()
    if not path.is_file():
        raise ImportRejected(f"No file at {path}.")
    if path.stat().st_size > settings.IMPORT_MAX_BYTES:  # the same limit as uploads
        raise ImportRejected(_too_big(settings.IMPORT_MAX_BYTES))
    job = ImportJob.objects.create(
        project=project,
        created_by=user if getattr(user, "is_authenticated", False) else None,
        filename=path.name[:255],
        path=str(path),
        format=fmt,
        size_bytes=path.stat().st_size,
    )
    return run_import(job.pk, on_progress=on_progress)


def job_file(job: ImportJob) -> Path:
    p = Path(job.path)
    return p if p.is_absolute() else Path(settings.DATA_DIR) / p


def _is_upload(path: Path) -> bool:
    try:
        path.resolve().relative_to(Path(settings.IMPORT_DIR).resolve())
        return True
    except ValueError:
        return False


def _remove_upload(job: ImportJob) -> None:
    path = job_file(job)
    if _is_upload(path):
        path.unlink(missing_ok=True)


# --- reading the file -------------------------------------------------------------


def _open(path: Path):
    """(raw file, decompressed binary stream). Progress is the raw file's position."""
    raw = open(path, "rb", buffering=0)
    try:
        head = raw.read(8)
        raw.seek(0)
        if head.startswith(b"\x1f\x8b"):
            stream = gzip.GzipFile(fileobj=raw, mode="rb")
        elif head.startswith(b"BZh"):
            stream = bz2.BZ2File(raw, "rb")
        elif head.startswith(b"\xfd7zXZ\x00"):
            stream = lzma.LZMAFile(raw, "rb")
        elif head.startswith(b"PK\x03\x04"):
            raise _FileError("ZIP archives are not supported: upload the JSONL file itself, or gzip it.")
        elif head.startswith(b"\x28\xb5\x2f\xfd"):
            raise _FileError("zstd compression is not supported: use gzip, bzip2 or xz.")
        else:
            stream = io.BufferedReader(raw, buffer_size=COPY_CHUNK_BYTES)
    except BaseException:
        raw.close()
        raise
    return raw, stream


_DECOMPRESS_ERRORS = (EOFError, zlib.error, lzma.LZMAError, OSError)


def _lines(stream) -> Iterator[tuple[int, bytes | None]]:
    """(line number, line) for every line; None for a line longer than MAX_LINE_BYTES."""
    n = 0
    while True:
        try:
            line = stream.readline(MAX_LINE_BYTES + 1)
        except _DECOMPRESS_ERRORS as exc:
            raise _FileError(f"The compressed file is damaged after line {n}: {exc}", n + 1) from None
        if not line:
            return
        n += 1
        if n == 1 and line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            while True:  # skip the rest of the long line
                try:
                    rest = stream.readline(COPY_CHUNK_BYTES)
                except _DECOMPRESS_ERRORS as exc:
                    raise _FileError(f"The compressed file is damaged after line {n}: {exc}", n) from None
                if not rest or rest.endswith(b"\n"):
                    break
            yield n, None
            continue
        yield n, line


def _decode_line(line: bytes, n: int):
    try:
        return orjson.loads(line), None
    except orjson.JSONDecodeError as exc:
        return None, LineError(n, "(json)", f"invalid JSON at column {exc.colno}: {exc.msg}")


def _too_long(n: int) -> LineError:
    return LineError(n, "(line)", f"the line is longer than {human_bytes(MAX_LINE_BYTES)}")


def json_too_deep(value, limit: int | None = None) -> str | None:
    """None when `value` nests at most `limit` (MAX_JSON_DEPTH) arrays and objects; else the dotted path
    of the first array or object past the limit (its first segments). Iterative: no recursion on hostile
    input (orjson itself stops at 1024 levels; pydantic's serializer and orjson.dumps fail at about 255,
    later and less clearly)."""
    limit = MAX_JSON_DEPTH if limit is None else limit
    level = [value] if isinstance(value, (dict, list)) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return _deep_path(value, limit)
        below = []
        for v in level:
            for c in (v.values() if isinstance(v, dict) else v):
                if isinstance(c, (dict, list)):
                    below.append(c)
        level = below
    return None


def _deep_path(value, limit: int, shown: int = 8) -> str:
    stack = [(value, 1, ())]
    while stack:
        v, d, path = stack.pop()
        if d > limit:
            parts = [str(p)[:40] for p in path]  # keys are input too: keep the field short
            return ".".join(parts[:shown]) + (f".… ({len(parts) - shown} more)" if len(parts) > shown else "")
        for k, c in (v.items() if isinstance(v, dict) else enumerate(v)):
            if isinstance(c, (dict, list)):
                stack.append((c, d + 1, (*path, k)))
    return ""  # pragma: no cover - only called when something is too deep


def _too_deep(n: int, path: str) -> LineError:
    return LineError(n, path or "(json)", f"nested deeper than {MAX_JSON_DEPTH} levels (arrays and objects "
                                          f"inside each other); an item may nest at most {MAX_JSON_DEPTH}")


class _Source:
    """The file: JSON Lines read line by line, or one JSON document parsed whole."""

    def __init__(self, path: Path, fmt: str):
        self.path = path
        self.fmt = fmt
        self.mode = "jsonl"
        self.raw = None
        self.stream = None
        self.values: list = []

    def position(self) -> int:
        try:
            return self.raw.tell() if self.raw is not None and not self.raw.closed else 0
        except (OSError, ValueError):
            return 0

    def close(self):
        for f in (self.stream, self.raw):
            if f is not None:
                try:
                    f.close()
                except Exception:  # noqa: BLE001
                    pass

    def _reopen(self):
        self.close()
        self.raw, self.stream = _open(self.path)

    def _read_document(self) -> bytes | None:
        """The whole decompressed file, or None when it is over MAX_DOCUMENT_BYTES."""
        self._reopen()
        try:
            data = self.stream.read(MAX_DOCUMENT_BYTES + 1)
        except _DECOMPRESS_ERRORS as exc:
            raise _FileError(f"The compressed file is damaged: {exc}") from None
        if len(data) > MAX_DOCUMENT_BYTES:
            return None
        if data.startswith(b"\xef\xbb\xbf"):
            data = data[3:]
        return data

    def _document(self, value) -> None:
        self.mode = "json"
        self.values = value if isinstance(value, list) else [value]

    def _too_big_document(self):
        return _FileError(
            f"A single JSON document over {human_bytes(MAX_DOCUMENT_BYTES)} cannot be imported: "
            "write one item per line (JSON Lines)."
        )

    def _parse_document(self, data: bytes):
        try:
            return orjson.loads(data), None
        except orjson.JSONDecodeError as exc:
            return None, _FileError(f"invalid JSON at column {exc.colno}: {exc.msg}", exc.lineno, "(json)")

    def _first_nonblank(self) -> tuple[bool, bytes | None]:
        """(found, line): the first line that is not blank (None when it is too long)."""
        for _n, line in _lines(self.stream):
            if line is None or line.strip():
                return True, line
        return False, None

    def _looks_like_lines(self) -> bool:
        """After a broken first line: does one of the next few lines decode on its own?"""
        self._reopen()
        seen = 0
        for n, line in _lines(self.stream):
            if line is not None and not line.strip():
                continue
            seen += 1
            if seen == 1:
                continue
            if line is not None and _decode_line(line, n)[1] is None:
                return True
            if seen >= 6:
                return False
        return False

    def open(self) -> None:
        """Decide the mode. Afterwards: `self.values` (mode 'json') or `self.lines()` (mode 'jsonl')."""
        self._reopen()
        if self.fmt == "json":
            data = self._read_document()
            if data is None:
                raise self._too_big_document()
            value, err = self._parse_document(data)
            del data
            if err is not None:
                raise err
            self._document(value)
            return
        if self.fmt == "auto":
            found, first = self._first_nonblank()
            if found:
                first_ok = first is not None and _decode_line(first, 1)[1] is None
                starts_array = first is not None and first.lstrip().startswith(b"[")
                if starts_array or not first_ok:
                    data = self._read_document()
                    if data is None:
                        if starts_array and not first_ok:
                            raise self._too_big_document()
                    else:
                        value, err = self._parse_document(data)
                        del data
                        if err is None:
                            self._document(value)
                            return
                        opens_document = first is not None and first.lstrip()[:1] in (b"{", b"[")
                        if not first_ok and opens_document and not self._looks_like_lines():
                            raise err
            self._reopen()
        self.mode = "jsonl"

    def lines(self) -> Iterator[tuple[int, bytes | None]]:
        """The lines that are not blank (None for one that is too long)."""
        for n, line in _lines(self.stream):
            if line is None or line.strip():
                yield n, line


# --- parsing values into rows -----------------------------------------------------------------


def _dumps(value) -> str:
    return orjson.dumps(value).decode()


_NUL = "\\u0000"


def _row(kind, value, n: int, *, shallow: bool = False):
    """(row, errors): row = (external_id, payload json, step count, priority, prediction json, model version).

    `shallow`: the caller knows the value cannot nest past MAX_JSON_DEPTH (its line has fewer brackets)."""
    deep = None if shallow else json_too_deep(value)
    if deep is not None:
        return None, [_too_deep(n, deep)]
    try:
        parsed = kind.parse_line(value, n)
    except ImportLineError as exc:
        return None, exc.errors
    except Exception as exc:  # noqa: BLE001 - a kind that trips over odd input fails that line, not the job
        log.warning("kind %s could not parse line %s", kind.name, n, exc_info=True)
        return None, [LineError(n, "(line)", f"could not be read: {type(exc).__name__}: {exc}")]
    errors = []
    external_id = parsed.external_id or ""
    if len(external_id) > 255:
        errors.append(LineError(n, "id", "the id is longer than 255 characters"))
    payload = _dumps(parsed.payload)
    prediction = None
    priority = 0.0
    model_version = ""
    if parsed.prediction is not None:
        prediction = _dumps(parsed.prediction)
        priority = float(kind.uncertainty(parsed.prediction))
        model_version = parsed.model_version or "imported"
        if len(model_version) > 100:
            errors.append(LineError(n, "model_version", "the model version is longer than 100 characters"))
    if _NUL in payload or (prediction is not None and _NUL in prediction):
        errors.append(LineError(n, "(line)", "the text holds a NUL character (\\u0000), which cannot be stored"))
    if errors:
        return None, errors
    return (external_id, payload, int(parsed.step_count), priority, prediction, model_version), None


def _parse_lines(kind, chunk) -> list[tuple[int, tuple | None, list | None]]:
    out = []
    for n, line in chunk:
        if line is None:
            out.append((n, None, [_too_long(n)]))
            continue
        value, err = _decode_line(line, n)
        if err is not None:
            out.append((n, None, [err]))
            continue
        # a line with at most MAX_JSON_DEPTH opening brackets cannot nest deeper: skip the walk
        shallow = line.count(b"{") + line.count(b"[") <= MAX_JSON_DEPTH
        row, errors = _row(kind, value, n, shallow=shallow)
        out.append((n, row, errors))
    return out


def _parse_chunk(kind_name: str, chunk) -> list:
    """Runs in a parser process (forked: the kind registry is already loaded)."""
    from .kinds import get_kind

    return _parse_lines(get_kind(kind_name), chunk)


def _chunks(lines, max_lines: int = PARSE_CHUNK_LINES, max_bytes: int = PARSE_CHUNK_BYTES):
    chunk, size = [], 0
    for n, line in lines:
        chunk.append((n, line))
        size += len(line) if line is not None else 0
        if len(chunk) >= max_lines or size >= max_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def parse_processes() -> int:
    """How many parser processes a large import uses (IMPORT_PARSE_PROCESSES; 0 = parse in-process)."""
    configured = getattr(settings, "IMPORT_PARSE_PROCESSES", None)
    if configured is not None:
        return max(0, int(configured))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(cpus, 4) if cpus > 1 else 0


def _parallel(kind_name: str, chunks, processes: int):
    """Parse chunks in `processes` forked processes, in order, with bounded read-ahead."""
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(processes) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_parse_chunk, (kind_name, chunk)))
            while len(pending) >= 2 * processes:
                yield from pending.popleft().get()
        while pending:
            yield from pending.popleft().get()


# --- writing rows ---------------------------------------------------------------------------


def _columns(model, values: dict) -> tuple[list[str], list]:
    """Every concrete column but an auto primary key; `values` maps field names to a position
    (int, taken from the row) or, for anything not given, the field's default."""
    cols, spec = [], []
    for f in model._meta.concrete_fields:
        if f.primary_key and f.name not in values:
            continue
        cols.append(connection.ops.quote_name(f.column))
        if f.name in values:
            spec.append(values[f.name])
        else:
            spec.append(("const", f.get_db_prep_save(f.get_default(), connection)))
    return cols, spec


def _copy_value(v) -> str:
    """One value in PostgreSQL's COPY text format."""
    if v is None:
        return "\\N"
    if isinstance(v, str):
        if "\\" in v:
            v = v.replace("\\", "\\\\")
        if "\t" in v or "\n" in v or "\r" in v:
            v = v.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
        return v
    if isinstance(v, bool):
        return "t" if v else "f"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, (dict, list)):
        return _copy_value(_dumps(v))
    wrapped = getattr(v, "obj", None)  # a JSON adapter (a JSONField default)
    if isinstance(wrapped, (dict, list)):
        return _copy_value(_dumps(wrapped))
    return _copy_value(str(v))


def _bulk_insert(cursor, model, values: dict, rows) -> None:
    cols, spec = _columns(model, values)
    table = connection.ops.quote_name(model._meta.db_table)
    if spec == list(range(len(spec))):
        data = rows
    else:  # a column this module does not know about: fill in its default
        data = [tuple(s[1] if isinstance(s, tuple) else r[s] for s in spec) for r in rows]
    if not data:
        return
    if connection.vendor == "postgresql":
        with cursor.cursor.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy:
            buf: list[str] = []
            size = 0
            for r in data:
                line = "\t".join([_copy_value(v) for v in r])
                buf.append(line)
                size += len(line)
                if size >= COPY_CHUNK_BYTES:
                    copy.write(("\n".join(buf) + "\n").encode())
                    buf, size = [], 0
            if buf:
                copy.write(("\n".join(buf) + "\n").encode())
    else:
        marks = ", ".join(["%s"] * len(cols))
        cursor.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})", data)


def _write_batch(job_id: int, project_id: int, rows: list, progress: dict) -> None:
    """Insert one batch of staged rows in one transaction; refuse if the job is no longer running."""
    now = timezone.now()
    item_now = Item._meta.get_field("created_at").get_db_prep_save(now, connection)
    pred_now = Prediction._meta.get_field("created_at").get_db_prep_save(now, connection)
    with transaction.atomic():
        if not ImportJob.objects.filter(pk=job_id, status=ImportJob.Status.RUNNING).update(heartbeat_at=now, **progress):
            raise _Cancelled()
        with connection.cursor() as cur:
            if connection.vendor == "postgresql":
                cur.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_PG_LOCK_NAMESPACE, project_id])
            q = connection.ops.quote_name
            item_table = q(Item._meta.db_table)
            seq, project_col, job_col, pk_col = (q(Item._meta.get_field(f).column)
                                                 for f in ("seq", "project", "import_job", "id"))
            cur.execute(f"SELECT MAX({seq}) FROM {item_table} WHERE {project_col} = %s", [project_id])
            start = (cur.fetchone()[0] or 0) + 1
            n = len(rows)
            item_rows = [
                (project_id, r[0], start + i, Item.State.STAGED, r[3], 0, r[2], job_id, item_now)
                for i, r in enumerate(rows)
            ]
            _bulk_insert(cur, Item, {
                "project": 0, "external_id": 1, "seq": 2, "state": 3, "priority": 4,
                "answer_count": 5, "step_count": 6, "import_job": 7, "created_at": 8,
            }, item_rows)
            cur.execute(
                f"SELECT {pk_col} FROM {item_table} WHERE {project_col} = %s AND {seq} >= %s AND {seq} < %s "
                f"AND {job_col} = %s ORDER BY {seq}",  # a range of the (project, seq) index
                [project_id, start, start + n, job_id],
            )
            ids = [r[0] for r in cur.fetchall()]
            if len(ids) != n:
                raise RuntimeError(f"wrote {n} items but found {len(ids)}")
            _bulk_insert(cur, ItemPayload, {"item": 0, "data": 1}, [(i, r[1]) for i, r in zip(ids, rows)])
            _bulk_insert(
                cur, Prediction, {"item": 0, "model_version": 1, "data": 2, "uncertainty": 3, "created_at": 4},
                [(i, r[5], r[4], r[3], pred_now) for i, r in zip(ids, rows) if r[4] is not None],
            )


def _delete_staged(job_id: int) -> int:
    """Delete a job's staged rows (and what hangs off them) in bounded chunks."""
    total = 0
    while True:
        with transaction.atomic():
            ids = list(
                Item.objects.filter(import_job_id=job_id, state=Item.State.STAGED).values_list("pk", flat=True)[
                    :DELETE_CHUNK
                ]
            )
            if not ids:
                return total
            Item.objects.filter(pk__in=ids).delete()
            ImportJob.objects.filter(pk=job_id, status=ImportJob.Status.RUNNING).update(heartbeat_at=timezone.now())
        total += len(ids)


def _finish_failed(job_id: int, errors: list[LineError], error_count: int, **progress) -> bool:
    """Delete the staged rows, then mark the job failed (if it still is queued or running)."""
    _delete_staged(job_id)
    now = timezone.now()
    with transaction.atomic():
        done = ImportJob.objects.filter(
            pk=job_id, status__in=[ImportJob.Status.QUEUED, ImportJob.Status.RUNNING]
        ).update(
            status=ImportJob.Status.FAILED,
            errors=[e.as_dict() for e in errors[:MAX_STORED_ERRORS]],
            error_count=error_count,
            items_imported=0,
            steps_imported=0,
            finished_at=now,
            heartbeat_at=now,
            **progress,
        )
        if done:
            job = ImportJob.objects.select_related("created_by").get(pk=job_id)
            AuditEvent.record(actor=job.created_by, verb="import.failed", obj=job, project=job.project,
                              after={"filename": job.filename, "errors": error_count})
    return bool(done)


# --- running a job ----------------------------------------------------------------------------


class _Run:
    def __init__(self, job: ImportJob, on_progress: Callable | None):
        self.job = job
        self.kind = job.project.kind_spec
        self.on_progress = on_progress
        self.errors: list[LineError] = []
        self.error_count = 0
        self.lines = 0
        self.items = 0
        self.steps = 0
        self.batch: list = []
        self.batch_bytes = 0
        self.source: _Source | None = None
        self.last_progress = time.monotonic()

    def progress_fields(self) -> dict:
        return {
            "bytes_read": self.source.position() if self.source else 0,
            "lines_read": self.lines,
            "items_imported": self.items,
            "steps_imported": self.steps,
        }

    def report(self):
        if self.on_progress is not None:
            self.job.bytes_read = self.progress_fields()["bytes_read"]
            self.job.lines_read, self.job.items_imported, self.job.steps_imported = self.lines, self.items, self.steps
            self.job.error_count = self.error_count
            self.on_progress(self.job)

    def add_errors(self, errors: list[LineError]):
        room = MAX_STORED_ERRORS - len(self.errors)
        if room > 0:
            self.errors.extend(errors[:room])
        self.error_count += len(errors)
        self.batch = []
        self.batch_bytes = 0

    def flush(self):
        if not self.batch:
            return
        rows = self.batch
        items = self.items + len(rows)
        steps = self.steps + sum(r[2] for r in rows)
        progress = self.progress_fields() | {"items_imported": items, "steps_imported": steps}
        _write_batch(self.job.pk, self.job.project_id, rows, progress)
        self.items, self.steps = items, steps
        self.batch = []
        self.batch_bytes = 0
        self.last_progress = time.monotonic()
        self.report()

    def beat(self):
        """Progress and heartbeat while no batch is written (scanning a failed file for errors)."""
        now = time.monotonic()
        if now - self.last_progress < PROGRESS_EVERY_S:
            return
        self.last_progress = now
        fields = self.progress_fields() | {"error_count": self.error_count}
        if not ImportJob.objects.filter(pk=self.job.pk, status=ImportJob.Status.RUNNING).update(
            heartbeat_at=timezone.now(), **fields
        ):
            raise _Cancelled()
        self.report()

    def results(self) -> Iterator[tuple[int, tuple | None, list | None]]:
        """(number, row, errors) per line or document value, in file order."""
        source = self.source
        source.open()
        if source.mode == "json":
            values, source.values = source.values, []
            total = len(values)
            for i in range(total):
                value, values[i] = values[i], None
                row, errors = _row(self.kind, value, i + 1)
                yield i + 1, row, errors
            return
        chunks = _chunks(source.lines())
        processes = parse_processes()
        if processes > 1 and self.job.size_bytes >= PARALLEL_MIN_BYTES:
            yield from _parallel(self.kind.name, chunks, processes)
        else:
            for chunk in chunks:
                yield from _parse_lines(self.kind, chunk)

    def run(self):
        job = self.job
        path = job_file(job)
        if not path.is_file():
            raise _FileError("The uploaded file is missing; upload it again.")
        self.source = _Source(path, job.format)
        failed = False
        results = self.results()
        try:
            for n, row, errors in results:
                self.lines = n
                if errors:
                    self.add_errors(errors)
                    failed = True
                elif not failed:
                    self.batch.append(row)
                    self.batch_bytes += len(row[1]) + (len(row[4]) if row[4] else 0)
                    if len(self.batch) >= BATCH_ITEMS or self.batch_bytes >= BATCH_BYTES:
                        self.flush()
                if failed:
                    self.beat()
        except _FileError as exc:
            self.add_errors([exc.error])
            failed = True
        finally:
            results.close()  # stops parser processes at once, whatever happened
        mode = self.source.mode
        size = job.size_bytes
        self.source.close()
        if mode != job.format:
            ImportJob.objects.filter(pk=job.pk).update(format=mode)
        if not failed:
            self.flush()
            if self.items == 0:
                self.add_errors([LineError(0, "(file)", "The file holds no items: it is empty or only has blank lines.")])
                failed = True
        final = {"bytes_read": size, "lines_read": self.lines}
        if failed:
            _finish_failed(job.pk, self.errors, self.error_count, **final)
            return
        now = timezone.now()
        with transaction.atomic():
            if not ImportJob.objects.filter(pk=job.pk, status=ImportJob.Status.RUNNING).update(
                status=ImportJob.Status.SUCCEEDED, finished_at=now, heartbeat_at=now,
                items_imported=self.items, steps_imported=self.steps, errors=[], error_count=0, **final,
            ):
                raise _Cancelled()
            Item.objects.filter(import_job_id=job.pk, state=Item.State.STAGED).update(state=Item.State.OPEN)
            AuditEvent.record(actor=job.created_by, verb="import.succeeded", obj=job, project=job.project,
                              after={"filename": job.filename, "items": self.items, "steps": self.steps})
            from . import live, training

            live.project_changed(job.project_id, what="items")
            # New open items get the promoted model's predictions (and so their queue priority).
            project_id, job_id = job.project_id, job.pk
            transaction.on_commit(lambda: training.enqueue_score_items(project_id, import_job_id=job_id))
        if self.items >= ANALYZE_MIN_ITEMS:
            _refresh_statistics()


def _refresh_statistics() -> None:
    """After a bulk load, give PostgreSQL's planner fresh row counts: with stale ones it may scan whole
    tables for the exports' id lists until autovacuum gets round to it."""
    if connection.vendor != "postgresql":
        return
    tables = ", ".join(connection.ops.quote_name(m._meta.db_table) for m in (Item, ItemPayload, Prediction))
    try:
        with connection.cursor() as cur:
            cur.execute(f"ANALYZE {tables}")
    except Exception:  # noqa: BLE001 - statistics are an optimisation; the import has succeeded
        log.warning("could not ANALYZE after an import", exc_info=True)


def run_import(job_id: int, *, on_progress: Callable | None = None) -> ImportJob:
    """Run a queued import job to the end; returns the job in its final state.

    A job that is not QUEUED (already running elsewhere, or finished) is left alone.
    """
    now = timezone.now()
    claimed = ImportJob.objects.filter(pk=job_id, status=ImportJob.Status.QUEUED).update(
        status=ImportJob.Status.RUNNING, started_at=now, heartbeat_at=now
    )
    job = ImportJob.objects.select_related("project", "created_by").get(pk=job_id)
    if not claimed:
        log.info("import job %s is %s, not queued: left alone", job_id, job.status)
        return job
    run = _Run(job, on_progress)
    try:
        run.run()
    except _Cancelled:
        log.warning("import job %s was stopped while running; deleting its staged rows", job_id)
        _delete_staged(job_id)
    except Exception as exc:  # noqa: BLE001 - a job never stays RUNNING because of a bug or a database error
        log.exception("import job %s failed", job_id)
        if run.source is not None:
            run.source.close()
        errors = run.errors + [LineError(run.lines, "(file)", f"The import stopped on an internal error: {exc}")]
        _finish_failed(job_id, errors, run.error_count + 1, lines_read=run.lines)
    finally:
        if run.source is not None:
            run.source.close()
        _remove_upload(job)
    job.refresh_from_db()
    return job


def fail_stale_imports(max_silence: timedelta = timedelta(minutes=2)) -> int:
    """Fail RUNNING jobs whose worker has been silent for `max_silence` (it died or was restarted)
    and delete their staged rows. Returns how many jobs were failed."""
    now = timezone.now()
    cutoff = now - max_silence
    silent = Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, started_at__lt=cutoff)
    minutes = max(1, int(max_silence.total_seconds() // 60))
    failed = 0
    for job in ImportJob.objects.filter(silent, status=ImportJob.Status.RUNNING).only("pk", "errors", "error_count"):
        message = (
            f"The import stopped: its worker gave no sign of life for over {minutes} minute(s) "
            "(it was probably restarted). Nothing was imported; upload the file again."
        )
        errors = list(job.errors or [])[: MAX_STORED_ERRORS - 1] + [{"line": 0, "field": "(file)", "message": message}]
        with transaction.atomic():
            done = ImportJob.objects.filter(silent, pk=job.pk, status=ImportJob.Status.RUNNING).update(
                status=ImportJob.Status.FAILED, finished_at=now, errors=errors,
                error_count=job.error_count + 1, items_imported=0, steps_imported=0,
            )
        if done:
            failed += 1
            _delete_staged(job.pk)
            _remove_upload(ImportJob.objects.get(pk=job.pk))
    # staged rows left behind by a cleanup that was itself interrupted
    for job_id in ImportJob.objects.filter(status=ImportJob.Status.FAILED, finished_at__gte=now - timedelta(hours=1)) \
            .values_list("pk", flat=True):
        if Item.objects.filter(import_job_id=job_id, state=Item.State.STAGED).exists():
            _delete_staged(job_id)
    return failed


__all__ = [
    "FORMATS",
    "ImportRejected",
    "create_import_job",
    "fail_stale_imports",
    "import_path",
    "job_file",
    "run_import",
]
