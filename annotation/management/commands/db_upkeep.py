"""VACUUM and ANALYZE the app's PostgreSQL tables that autovacuum leaves alone, by autovacuum's own rules
(annotation/dbupkeep.py).

    manage.py db_upkeep

`manage.py serve` does this every 15 seconds; run it from cron where the server runs elsewhere and
PostgreSQL's autovacuum is off. It does nothing where autovacuum runs, and nothing on SQLite.
"""

from django.core.management.base import BaseCommand

from annotation.dbupkeep import upkeep


class Command(BaseCommand):
    help = "VACUUM and ANALYZE the app's tables that autovacuum leaves alone, when autovacuum's rules say so."

    def handle(self, *args, **options):
        done = upkeep()
        self.stdout.write("\n".join(done) if done else "no table needed it")
