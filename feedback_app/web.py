"""One web process: uvicorn serving the ASGI application (feedback_app.asgi) over HTTP and websockets.

`manage.py serve` runs one of these in its own process and, with --web-processes N, starts N - 1 more
as `python -m feedback_app.web --fd FD`, each on its own listening socket (SO_REUSEPORT) that the
supervisor opened and keeps for restarts.

The server: uvloop's event loop, httptools' HTTP parser and the websockets library's sans-I/O protocol.
docs/architecture.md says why it is uvicorn (daphne served the same application with about a quarter
more CPU per request).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import sys

APP = "feedback_app.asgi:application"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def config(**bind):
    """uvicorn's settings for the app; `bind` is host and port, or nothing when given sockets."""
    import uvicorn
    from django.conf import settings

    return uvicorn.Config(
        APP,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        lifespan="off",  # Django has no startup or shutdown hooks to run
        # The client address and scheme from X-Forwarded-For / -Proto only behind a proxy: a client that
        # reaches the server directly could name any address (and so dodge the per-address login limit).
        proxy_headers=settings.BEHIND_TLS_PROXY,
        forwarded_allow_ips=os.environ.get("FORWARDED_ALLOW_IPS", "*"),
        server_header=False,
        # Django's LOGGING configures the loggers (uvicorn's access log is `uvicorn.access` at INFO)
        log_config=None,
        # In-flight requests get this long to finish on SIGTERM; open websockets are then closed.
        timeout_graceful_shutdown=10,
        **bind,
    )


def serve(sock: socket.socket | None = None, *, host: str = "127.0.0.1", port: int = 8000):
    """Serve until SIGTERM or SIGINT, on `sock` or else on host:port."""
    import uvicorn

    server = uvicorn.Server(config() if sock is not None else config(host=host, port=port))
    server.run(sockets=[sock] if sock is not None else None)


def _exit_with_parent():
    """Linux: SIGTERM this process when the supervisor that started it dies, even by SIGKILL; an orphan
    would go on taking connections on its socket beside the restarted server's, with old code."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the supervisor's own shutdown still stops it
        return
    if os.getppid() == 1:  # the supervisor died before prctl took effect
        sys.exit(0)


def main(argv=None):
    parser = argparse.ArgumentParser(description="One web process on an inherited listening socket.")
    parser.add_argument("--fd", type=int, required=True, help="descriptor of a bound, listening TCP socket")
    args = parser.parse_args(argv)
    _exit_with_parent()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "feedback_app.settings")
    # socket(fileno=) reads the family from the descriptor: an AF_INET socket gets TCP_NODELAY from the
    # event loop (uvicorn's own --fd takes every descriptor for a Unix socket, and small responses then
    # wait out the peer's delayed ACK, about 40 ms each).
    serve(socket.socket(fileno=args.fd))


if __name__ == "__main__":
    main()
