"""Request body parsers of the API, with limits.

- JSON is decoded with orjson (strict RFC 8259: no NaN or Infinity, UTF-8 only; it stops at 1024 levels
  by itself, where the standard library's decoder would fail with a RecursionError, a 500) and refused
  with 400 when nested deeper than MAX_JSON_DEPTH levels, naming where;
- a body over DATA_UPLOAD_MAX_MEMORY_SIZE is refused with 413 (multipart bodies: their fields other than
  files, as Django counts; import files have IMPORT_MAX_BYTES). DRF reads JSON and form bodies through
  Django's `request.body`, which raises RequestDataTooBig; `api_error` turns that (and Django's field
  count limit) into an API error. The parsers check the size again themselves, before reading when
  Content-Length says so.

Errors have the API's shape: {"detail": "...", "errors": [{"field", "message"}]}.
"""

from __future__ import annotations

import orjson
from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent
from django.http import QueryDict
from rest_framework import parsers, status
from rest_framework.exceptions import APIException, ParseError

from ..importing import MAX_JSON_DEPTH, json_too_deep as too_deep


class BodyTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "body_too_large"

    def __init__(self, limit: int):
        message = f"The request body is larger than {limit} bytes (DATA_UPLOAD_MAX_MEMORY_SIZE)."
        super().__init__({"detail": message, "errors": [{"field": None, "message": message}]})


class BodyInvalid(ParseError):
    def __init__(self, message: str, field: str | None = None):
        super().__init__({"detail": message, "errors": [{"field": field, "message": message}]})


def api_error(exc: BaseException) -> BaseException:
    """Django's body limits as API errors (413 and 400 with a message) instead of Django's plain 400 page."""
    if isinstance(exc, RequestDataTooBig):
        return BodyTooLarge(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
    if isinstance(exc, TooManyFieldsSent):
        return _too_many_fields()
    return exc


def body_limit() -> int | None:
    return settings.DATA_UPLOAD_MAX_MEMORY_SIZE


def read_body(stream, parser_context) -> bytes:
    """The whole body, or BodyTooLarge as soon as it passes the limit."""
    limit = body_limit()
    if limit is None:
        return stream.read()
    request = (parser_context or {}).get("request")
    meta = getattr(request, "META", {}) if request is not None else {}
    try:
        declared = int(meta.get("CONTENT_LENGTH") or 0)
    except (TypeError, ValueError):
        declared = 0
    if declared > limit:
        raise BodyTooLarge(limit)
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise BodyTooLarge(limit)
    return data


def check_depth(value) -> None:
    """BodyInvalid when `value` is nested deeper than MAX_JSON_DEPTH (arrays and objects count)."""
    path = too_deep(value, MAX_JSON_DEPTH)
    if path is not None:
        field = path or None
        raise BodyInvalid(f"{field or 'The body'}: nested deeper than {MAX_JSON_DEPTH} levels "
                          f"(arrays and objects); the API accepts at most {MAX_JSON_DEPTH}.", field)


class JSONParser(parsers.JSONParser):
    """JSON bodies: size limit, orjson, depth limit."""

    def parse(self, stream, media_type=None, parser_context=None):
        data = read_body(stream, parser_context)
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise BodyInvalid(f"JSON parse error - {exc}") from None
        check_depth(value)
        return value


def _too_many_fields() -> BodyInvalid:
    return BodyInvalid(f"The request has more than {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS} fields "
                       "(DATA_UPLOAD_MAX_NUMBER_FIELDS).")


class FormParser(parsers.FormParser):
    """URL-encoded form bodies with the same size limit (Django's field count limit applies as well)."""

    def parse(self, stream, media_type=None, parser_context=None):
        data = read_body(stream, parser_context)
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            return QueryDict(data, encoding=encoding)
        except TooManyFieldsSent:
            raise _too_many_fields() from None


class MultiPartParser(parsers.MultiPartParser):
    """Multipart bodies: Django's limits (fields other than files within DATA_UPLOAD_MAX_MEMORY_SIZE, at most
    DATA_UPLOAD_MAX_NUMBER_FIELDS fields) answered as API errors instead of Django's plain 400 page."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except (RequestDataTooBig, TooManyFieldsSent) as exc:
            raise api_error(exc) from None
