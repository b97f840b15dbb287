"""The web server: uvicorn serving the ASGI application (feedback_app.asgi) over HTTP and websockets.

With one web process, `manage.py serve` runs it in its own process on the port. With --web-processes
N it starts N of them as `python -m feedback_app.web --channel FD`, and its main thread becomes the
dispatcher: it accepts every connection on the port and hands it, over a Unix socket (SCM_RIGHTS), to
the web process with the fewest open connections; each web process reports that count back. The
kernel's own spreading (SO_REUSEPORT) hashes the client's address and port, so a few long keep-alive
connections (16 reviewers, or a proxy's upstream pool) can split 13 to 3, and the busier process,
one GIL, one core, falls behind while the other idles (docs/architecture.md).

The server: uvloop's event loop, httptools' HTTP parser and the websockets library's sans-I/O protocol.
docs/architecture.md says why it is uvicorn (daphne served the same application with about a seventh
more CPU per answer).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import selectors
import signal
import socket
import sys

APP = "feedback_app.asgi:application"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def config(**bind):
    """uvicorn's settings for the app; `bind` is host and port, or nothing for a web process that is
    handed its connections."""
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


def serve(*, host: str = "127.0.0.1", port: int = 8000):
    """Serve on host:port until SIGTERM or SIGINT (the one-process server)."""
    import uvicorn

    uvicorn.Server(config(host=host, port=port)).run()


# --- several web processes: the dispatcher's side (in `manage.py serve`) and the web process's --------

REPORT_S = 0.05  # a web process reports its open connections at most this often, when they changed


class Dispatcher:
    """Accepts on the listening socket and hands each connection to the web process with the fewest
    open: those it reported last, plus those handed to it since that it had not yet received."""

    def __init__(self, listener: socket.socket):
        self.listener = listener
        listener.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ, None)
        self.channels: dict[int, socket.socket] = {}  # web process index -> our end of its channel
        self.handed: dict[int, int] = {}  # connections handed to it over this channel
        self.load: dict[int, int] = {}  # its open connections as far as we know

    def channel_for(self, i: int) -> socket.socket:
        """A fresh channel for web process i (started or restarted): returns the end it inherits."""
        self.drop(i)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        theirs.set_inheritable(True)
        self.channels[i], self.handed[i], self.load[i] = ours, 0, 0
        self.selector.register(ours, selectors.EVENT_READ, i)
        return theirs

    def drop(self, i: int) -> None:
        chan = self.channels.pop(i, None)
        if chan is not None:
            self.selector.unregister(chan)
            chan.close()
        self.handed.pop(i, None)
        self.load.pop(i, None)

    def run_once(self, timeout: float) -> None:
        for key, _ in self.selector.select(timeout):
            if key.data is None:
                self._accept()
            else:
                self._report(key.data)

    def _report(self, i: int) -> None:
        chan = self.channels.get(i)
        if chan is None:  # dropped earlier in this round (a hand-over found it broken)
            return
        try:
            while True:
                msg = chan.recv(64)
                if not msg:  # the web process is gone; the supervisor restarts it
                    self.drop(i)
                    return
                received, open_now = map(int, msg.split())
                self.load[i] = open_now + self.handed[i] - received
        except BlockingIOError:
            pass
        except (OSError, ValueError):
            self.drop(i)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. out of descriptors: leave it queued, try again on the next round
                return
            with conn:
                if conn.family in (socket.AF_INET, socket.AF_INET6):
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for i in sorted(self.load, key=self.load.get):
                    try:
                        socket.send_fds(self.channels[i], [b"c"], [conn.fileno()])
                    except OSError:  # its channel broke: it is exiting
                        self.drop(i)
                        continue
                    self.handed[i] += 1
                    self.load[i] += 1
                    break
                # No web process took it (none running this instant): closing it tells the client.


def _serve_handed(channel: socket.socket) -> None:
    """A web process: serve the connections the dispatcher hands over `channel`, reporting how many
    are open, until SIGTERM or SIGINT."""
    import uvicorn

    server = uvicorn.Server(config())

    async def run():
        with server.capture_signals():
            server.config.load()
            server.lifespan = server.config.lifespan_class(server.config)
            await server.startup(sockets=[])  # listens on nothing: connections arrive over the channel
            loop = asyncio.get_running_loop()
            state = server.server_state
            cfg = server.config
            received = 0
            reported = None

            def protocol():
                return cfg.http_protocol_class(config=cfg, server_state=state, app_state=server.lifespan.state)

            def take():
                nonlocal received
                while True:
                    try:
                        _, fds, _, _ = socket.recv_fds(channel, 16, 16)
                    except (BlockingIOError, InterruptedError):
                        return
                    except OSError:
                        fds = None
                    if not fds:  # the dispatcher is gone
                        loop.remove_reader(channel.fileno())
                        server.should_exit = True
                        return
                    for fd in fds:
                        received += 1
                        sock = socket.socket(fileno=fd)
                        sock.setblocking(False)
                        loop.create_task(loop.connect_accepted_socket(protocol, sock))

            async def report():
                nonlocal reported
                while not server.should_exit:
                    now = (received, len(state.connections))
                    if now != reported:
                        try:
                            channel.send(f"{now[0]} {now[1]}".encode())
                            reported = now
                        except BlockingIOError:
                            pass
                        except OSError:
                            server.should_exit = True
                    await asyncio.sleep(REPORT_S)

            channel.setblocking(False)
            loop.add_reader(channel.fileno(), take)
            reporter = loop.create_task(report())
            await server.main_loop()
            loop.remove_reader(channel.fileno())
            reporter.cancel()
            await server.shutdown(sockets=[])

    with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
        runner.run(run())


def _exit_with_parent():
    """Linux: SIGTERM this process when the supervisor that started it dies, even by SIGKILL. The
    channel closing stops it too, but only once its event loop runs and reads it; until then an
    orphan would hold its connections and database connections."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the supervisor's own shutdown still stops it
        return
    if os.getppid() == 1:  # the supervisor died before prctl took effect
        sys.exit(0)


def main(argv=None):
    parser = argparse.ArgumentParser(description="One web process of `manage.py serve --web-processes N`.")
    parser.add_argument("--channel", type=int, required=True,
                        help="descriptor of the Unix socket the dispatcher hands connections over")
    args = parser.parse_args(argv)
    _exit_with_parent()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "feedback_app.settings")
    _serve_handed(socket.socket(fileno=args.channel))


if __name__ == "__main__":
    main()
