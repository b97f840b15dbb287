"""Ordinary HTTP requests from the ASGI server to Django's WSGI handler on a fixed thread pool, crossing
between the event loop and a thread twice per request.

The event loop reads the whole request body (these are API calls and form posts; long uploads take
the other route, feedback_app/asgi.py), the thread runs Django and renders the whole response, and
the loop writes it. a2wsgi's middleware, used before, crossed for every read of the body and every
write of the response (start, each chunk, the end), each a round trip in which the thread waited on
the loop: about five per request. A streaming response (WhiteNoise's static files) is still sent
chunk by chunk as the thread reads it.

A body longer than DATA_UPLOAD_MAX_MEMORY_SIZE, the most any of these views accepts, is refused with
413 before Django sees it (as annotation/api/parsers.py words it); one over a megabyte is spooled to
a temporary file while it is read.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import io
import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor

from a2wsgi.wsgi import build_environ

SPOOL_BYTES = 1 << 20  # request bodies above this go to a temporary file while they are read
DRAIN_BYTES = 64 << 20  # a body over the limit is read and dropped up to this much before the 413


class PooledWSGI:
    """An ASGI app running the WSGI app `app` on `workers` threads."""

    def __init__(self, app, *, workers: int, max_body: int):
        self.app = app
        self.max_body = max_body
        self.workers = workers
        self._new_pool()
        # A forked child (a test's live server) inherits the pool's bookkeeping but not its threads:
        # work handed to it would wait forever. Each child starts its own.
        os.register_at_fork(after_in_child=self._new_pool)

    def _new_pool(self):
        self.executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="web")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"PooledWSGI serves HTTP only, not {scope['type']}")
        if self._declared_length(scope) > self.max_body:
            body = None if await self._drain(receive) else False
        else:
            body = await self._read_body(receive)
        if body is False:  # the client left before it finished sending: nobody to answer
            return
        if body is None:
            await self._too_large(scope, send)
            return
        loop = asyncio.get_running_loop()
        environ = build_environ(scope, body)
        context = contextvars.copy_context()
        status, headers, content, streaming = await loop.run_in_executor(
            self.executor, functools.partial(context.run, self._run, environ))
        if not streaming:
            await _send_whole(send, status, headers, content)
            return
        # A streaming response: each chunk is read on the pool and written here.
        await send({"type": "http.response.start", "status": status, "headers": headers})
        iterator = iter(content)
        try:
            while True:
                chunk = await loop.run_in_executor(self.executor, next, iterator, None)
                if chunk is None:
                    break
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            close = getattr(content, "close", None)
            if close is not None:
                # Django's request_finished (closing the request's database connections) runs on the pool.
                await loop.run_in_executor(self.executor, context.run, close)

    @staticmethod
    def _declared_length(scope) -> int:
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    return int(value)
                except ValueError:
                    return 0  # Django answers a malformed one
        return 0

    async def _too_large(self, scope, send):
        message = f"The request body is larger than {self.max_body} bytes (DATA_UPLOAD_MAX_MEMORY_SIZE)."
        if scope["path"].startswith("/api/"):
            content, kind = json.dumps({"detail": message, "errors": []}).encode(), b"application/json"
        else:
            content, kind = message.encode(), b"text/plain; charset=utf-8"
        await _send_whole(send, 413, [(b"content-type", kind), (b"connection", b"close")], content)

    @staticmethod
    async def _drain(receive) -> bool:
        """Read what is left of the body (DRAIN_BYTES at most); True when the client still listens."""
        left = DRAIN_BYTES
        while left > 0:
            message = await receive()
            if message["type"] == "http.disconnect":
                return False
            left -= len(message.get("body", b""))
            if not message.get("more_body", False):
                return True
        return True  # more than that: answer anyway, and the client may see a reset

    async def _read_body(self, receive):
        """The request body as a file object; None when it is longer than max_body (the rest read and
        dropped), False when the client disconnected before sending all of it."""
        chunks, size, spool = [], 0, None
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if spool is not None:
                    spool.close()
                return False
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                if spool is not None:
                    spool.close()
                # Read the rest and drop it, then answer: a connection closed on unread data is reset,
                # and the client would see that instead of the 413.
                if message.get("more_body", False) and not await self._drain(receive):
                    return False
                return None
            if spool is None and size > SPOOL_BYTES:
                spool = tempfile.TemporaryFile()
                spool.writelines(chunks)
                chunks = []
            if spool is not None:
                spool.write(chunk)
            elif chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        if spool is not None:
            spool.seek(0)
            return spool
        return io.BytesIO(b"".join(chunks))

    def _run(self, environ):
        """On the pool: Django handles the request; the whole response, unless it streams."""
        started = []

        def start_response(status, response_headers, exc_info=None):
            if exc_info is not None and started:
                raise exc_info[1].with_traceback(exc_info[2])
            started[:] = [status, response_headers]
            return _no_write

        try:
            result = self.app(environ, start_response)
        finally:
            environ["wsgi.input"].close()
        status = int(started[0].split(" ", 1)[0])
        headers = [(name.strip().lower().encode("latin1"), value.strip().encode("latin1"))
                   for name, value in started[1]]
        if getattr(result, "streaming", False):
            return status, headers, result, True
        try:
            content = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return status, headers, content, False


def _no_write(data):
    raise NotImplementedError("write() of WSGI's start_response is not supported; return the body instead")


async def _send_whole(send, status, headers, content: bytes):
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})


