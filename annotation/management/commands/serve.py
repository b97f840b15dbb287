"""Run the ASGI server (daphne) with background workers beside it.

    manage.py serve --host 127.0.0.1 --port 8000

Workers are `manage.py db_worker` processes for the `default` queue (imports,
scoring) and the `gpu` queue (training); they restart if they exit. Pass
--workers 0 to run them elsewhere (any machine that reaches the same database).
"""

import os
import signal
import subprocess
import sys
import threading
import time

from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Serve the app over HTTP and websockets, with background workers."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--workers", type=int, default=1, help="db_worker processes to run beside the server")
        parser.add_argument("--queues", default="default,gpu")

    def handle(self, *args, host, port, workers, queues, **options):
        stop = threading.Event()
        procs: list[subprocess.Popen] = []

        def start_worker(i):
            cmd = [sys.executable, "manage.py", "db_worker", "--queue-name", queues, "--interval", "0.5",
                   "--worker-id", f"{os.uname().nodename}-{os.getpid()}-{i}"]
            return subprocess.Popen(cmd, cwd=settings.BASE_DIR)

        def reap():
            """Training runs whose worker died (killed, machine lost) go back to the queue or fail."""
            from django.db import close_old_connections

            from annotation.training import reap_stale_runs

            try:
                for d in reap_stale_runs():
                    self.stderr.write(f"training run {d['run']}: worker stopped sending heartbeats; {d['action']}")
            except Exception as exc:  # noqa: BLE001 - the supervisor keeps going
                self.stderr.write(f"reaping training runs failed: {exc}")
            finally:
                close_old_connections()

        def supervise():
            next_reap = 0.0
            while not stop.is_set():
                for i, p in enumerate(procs):
                    if p.poll() is not None and not stop.is_set():
                        self.stderr.write(f"worker {i} exited with {p.returncode}; restarting")
                        procs[i] = start_worker(i)
                if time.monotonic() >= next_reap:
                    reap()
                    next_reap = time.monotonic() + 15
                stop.wait(2)

        for i in range(workers):
            procs.append(start_worker(i))
        threading.Thread(target=supervise, daemon=True).start()

        def shutdown(*_):
            stop.set()
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            deadline = time.time() + 10
            for p in procs:
                try:
                    p.wait(max(0.1, deadline - time.time()))
                except subprocess.TimeoutExpired:
                    p.kill()

        signal.signal(signal.SIGTERM, lambda *a: (shutdown(), sys.exit(0)))
        self.stdout.write(f"Serving on http://{host}:{port}/ with {workers} worker(s) on queues {queues}")
        from daphne.cli import CommandLineInterface

        try:
            CommandLineInterface().run(["-b", host, "-p", str(port), "--proxy-headers", "feedback_app.asgi:application"])
        finally:
            shutdown()
