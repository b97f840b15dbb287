"""Re-queue (or fail) training runs whose worker stopped sending heartbeats.

    manage.py reap_runs [--silence SECONDS]

`manage.py serve` does this every 15 seconds, and the Models page on every load; run it from cron
where workers and pages are elsewhere.
"""

from datetime import timedelta

from django.core.management.base import BaseCommand

from annotation.training import reap_stale_runs, setting


class Command(BaseCommand):
    help = "Re-queue or fail training runs whose worker stopped sending heartbeats."

    def add_arguments(self, parser):
        parser.add_argument("--silence", type=float, default=None,
                            help="seconds without a heartbeat after which a worker counts as dead "
                                 "(default: TRAINING_HEARTBEAT_SILENCE_S, 60)")

    def handle(self, *args, silence, **options):
        seconds = silence if silence is not None else setting("TRAINING_HEARTBEAT_SILENCE_S", 60, float)
        done = reap_stale_runs(timedelta(seconds=seconds))
        for d in done:
            self.stdout.write(f"run {d['run']}: {d['action']}")
        if not done:
            self.stdout.write("no stale runs")
