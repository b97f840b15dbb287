"""ANALYZE the app's tables that autovacuum leaves alone, once they changed enough (annotation/dbstats.py).

    manage.py refresh_statistics

`manage.py serve` does this every 15 seconds; run it from cron where the server runs elsewhere and
PostgreSQL's autovacuum is off. It does nothing where autovacuum runs, and nothing on SQLite.
"""

from django.core.management.base import BaseCommand

from annotation.dbstats import refresh_statistics


class Command(BaseCommand):
    help = "ANALYZE the app's tables that autovacuum leaves alone and that changed enough since."

    def handle(self, *args, **options):
        analyzed = refresh_statistics()
        self.stdout.write(f"analyzed {', '.join(analyzed)}" if analyzed else "no table needed it")
