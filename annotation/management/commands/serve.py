"""Run the web server (uvicorn, feedback_app/web.py) with background workers beside it.

    manage.py serve --host 127.0.0.1 --port 8000

Workers are `manage.py db_worker` processes for the `default` queue (imports,
scoring) and the `gpu` queue (training); they restart if they exit. Pass
--workers 0 to run them elsewhere (any machine that reaches the same database).

--web-processes N (or WEB_PROCESSES=N) runs N web processes (`python -m feedback_app.web`): this
command then accepts the connections on the port and hands each to the web process with the fewest
open (feedback_app/web.py). One web process runs Django's sync code under one GIL, so more processes
use more CPU cores. With more than one, live updates need a shared channel layer (REDIS_URL).
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Serve the app over HTTP and websockets, with background workers."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--workers", type=int, default=1, help="db_worker processes to run beside the server")
        parser.add_argument("--queues", default="default,gpu")
        parser.add_argument("--web-processes", type=int, default=int(os.environ.get("WEB_PROCESSES", "1")),
                            help="web processes sharing the port (default 1, or WEB_PROCESSES)")

    def handle(self, *args, host, port, workers, queues, web_processes, **options):
        if web_processes < 1:
            raise CommandError("--web-processes must be at least 1.")
        if web_processes > 1 and not getattr(settings, "REDIS_URL", ""):
            raise CommandError("More than one web process needs REDIS_URL: the in-memory channel layer "
                               "reaches one process only.")
        stop = threading.Event()
        procs: list[subprocess.Popen] = []
        webs: list[subprocess.Popen] = []  # with more than one web process; else it runs in this one
        dispatcher = None
        if web_processes > 1:
            from feedback_app.web import Dispatcher

            # One listening socket, accepted on here: each connection goes to the web process with the
            # fewest open (feedback_app/web.py says why not SO_REUSEPORT's hash).
            listener = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                            backlog=1024)
            dispatcher = Dispatcher(listener)

        def start_web(i):
            """Web process i, on a fresh channel from the dispatcher."""
            channel = dispatcher.channel_for(i)
            cmd = [sys.executable, "-m", "feedback_app.web", "--channel", str(channel.fileno())]
            try:
                return subprocess.Popen(cmd, cwd=settings.BASE_DIR, pass_fds=(channel.fileno(),))
            finally:
                channel.close()

        def start_worker(i):
            cmd = [sys.executable, "manage.py", "db_worker", "--queue-name", queues, "--interval", "0.5",
                   "--worker-id", f"{os.uname().nodename}-{os.getpid()}-{i}"]
            return subprocess.Popen(cmd, cwd=settings.BASE_DIR)

        def housekeeping():
            """Training runs whose worker died (killed, machine lost) go back to the queue or fail; and the
            tables autovacuum leaves alone are vacuumed and analyzed (annotation/dbupkeep.py)."""
            from django.db import close_old_connections

            from annotation.dbupkeep import upkeep
            from annotation.training import reap_stale_runs

            try:
                for d in reap_stale_runs():
                    self.stderr.write(f"training run {d['run']}: worker stopped sending heartbeats; {d['action']}")
            except Exception as exc:  # noqa: BLE001 - the supervisor keeps going
                self.stderr.write(f"reaping training runs failed: {exc}")
            try:
                upkeep()
            except Exception as exc:  # noqa: BLE001
                self.stderr.write(f"vacuuming and analyzing tables failed: {exc}")
            finally:
                close_old_connections()

        def supervise():
            next_housekeeping = 0.0
            while not stop.is_set():
                for i, p in enumerate(procs):
                    if p.poll() is not None and not stop.is_set():
                        self.stderr.write(f"worker {i} exited with {p.returncode}; restarting")
                        procs[i] = start_worker(i)
                if time.monotonic() >= next_housekeeping:
                    housekeeping()
                    next_housekeeping = time.monotonic() + 15
                stop.wait(2)

        def restart_webs():
            for i, p in enumerate(webs):
                if p.poll() is not None and not stop.is_set():
                    self.stderr.write(f"web process {i + 1} exited with {p.returncode}; restarting")
                    webs[i] = start_web(i)

        for i in range(workers):
            procs.append(start_worker(i))
        if dispatcher is not None:
            webs[:] = [start_web(i) for i in range(web_processes)]
        threading.Thread(target=supervise, daemon=True).start()

        def shutdown(*_):
            stop.set()
            for p in procs + webs:
                if p.poll() is None:
                    p.terminate()
            deadline = time.time() + 10
            for p in procs + webs:
                try:
                    p.wait(max(0.1, deadline - time.time()))
                except subprocess.TimeoutExpired:
                    p.kill()

        signal.signal(signal.SIGTERM, lambda *a: (shutdown(), sys.exit(0)))
        self.stdout.write(f"Serving on http://{host}:{port}/ with {web_processes} web process(es) and "
                          f"{workers} worker(s) on queues {queues}")
        try:
            if dispatcher is None:
                from feedback_app.web import serve

                serve(host=host, port=port)
            else:
                while not stop.is_set():
                    dispatcher.run_once(timeout=1.0)
                    restart_webs()
        finally:
            shutdown()
