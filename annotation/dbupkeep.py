"""Vacuum and analyze the app's PostgreSQL tables where autovacuum does not.

Autovacuum analyzes a table once enough of it changed and vacuums it once enough of it is dead rows.
Where it is off (for the server, or for a table), nothing does, and two things go wrong under the
review loop:

- Prepared statements (DATABASE_PREPARED_STATEMENTS, on by default) keep their generic plan until a
  table they read is analyzed again. A plan made while a table was nearly empty stays as it grows: in
  a 10-minute soak a lookup of one reviewer's answer to one item ran as a sequential scan of the whole
  answers table 86,000 times (docs/benchmarks.md).
- Leases are written and deleted on every answer: in 6 minutes of a soak the lease table held 24 live
  rows and 45,500 dead ones, which every lease lookup walked past.

So `manage.py serve` calls `upkeep` every 15 seconds, and `manage.py db_upkeep` runs it once (for
cron where the server runs elsewhere). It applies autovacuum's own rules and settings (the server's,
or a table's own storage parameters) to the app's tables that autovacuum leaves alone, and does
nothing where autovacuum runs. VACUUM (not FULL) and ANALYZE block neither reads nor writes.
"""

import logging

from django.db import DEFAULT_DB_ALIAS, connections

log = logging.getLogger(__name__)

_OFF = {"false", "off", "no", "0"}

_SETTINGS = ("autovacuum", "autovacuum_analyze_threshold", "autovacuum_analyze_scale_factor",
             "autovacuum_vacuum_threshold", "autovacuum_vacuum_scale_factor",
             "autovacuum_vacuum_insert_threshold", "autovacuum_vacuum_insert_scale_factor")

_TABLES = """
SELECT c.relname, c.reloptions, c.reltuples, s.n_mod_since_analyze, s.n_dead_tup, s.n_ins_since_vacuum
FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
WHERE s.schemaname = current_schema() AND c.relname = ANY(%s)
"""


def options(reloptions: list[str] | None) -> dict[str, str]:
    """A table's storage parameters (pg_class.reloptions, "name=value" strings) as a dict."""
    return dict(option.partition("=")[::2] for option in reloptions or ())


def unattended(server: dict[str, str], table: dict[str, str]) -> bool:
    """Whether autovacuum leaves the table alone: off for the server, or off for the table."""
    return server["autovacuum"].lower() in _OFF or table.get("autovacuum_enabled", "on").lower() in _OFF


def _over(count: int, rows: float, name: str, server: dict[str, str], table: dict[str, str]) -> bool:
    """Autovacuum's trigger: count > <name>_threshold + <name>_scale_factor x the table's rows (as of its
    last VACUUM or ANALYZE; -1, never counted, is 0). A table's own parameter wins over the server's;
    a threshold of -1 (the insert trigger's way to say off) never triggers."""
    threshold = float(table.get(f"{name}_threshold", server[f"{name}_threshold"]))
    scale = float(table.get(f"{name}_scale_factor", server[f"{name}_scale_factor"]))
    return threshold >= 0 and count > threshold + scale * max(rows, 0)


def due(server: dict[str, str], table: dict[str, str], rows: float, changed: int, dead: int,
        inserted: int) -> tuple[bool, bool]:
    """(vacuum, analyze) as autovacuum would decide them for the table: vacuum for dead rows, or for
    rows inserted since its last vacuum (which keeps the visibility map current for index-only scans);
    analyze for rows inserted, updated or deleted since its last ANALYZE."""
    vacuum = (_over(dead, rows, "autovacuum_vacuum", server, table)
              or _over(inserted or 0, rows, "autovacuum_vacuum_insert", server, table))
    return vacuum, _over(changed, rows, "autovacuum_analyze", server, table)


def upkeep(using: str = DEFAULT_DB_ALIAS) -> list[str]:
    """VACUUM and/or ANALYZE each of the app's tables that autovacuum leaves alone and that autovacuum's
    rules say is due. Returns what ran, as "VACUUM (ANALYZE) table" strings (nothing on SQLite, which
    plans every statement afresh and reuses its free pages itself). A table locked by another session
    is skipped by PostgreSQL (SKIP_LOCKED), listed all the same, and due again in the next round."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return []
    done = []
    tables = connection.introspection.django_table_names(only_existing=False, include_views=False)
    with connection.cursor() as cursor:
        cursor.execute("SELECT " + ", ".join(f"current_setting('{name}')" for name in _SETTINGS))
        server = dict(zip(_SETTINGS, cursor.fetchone()))
        cursor.execute(_TABLES, [tables])
        for name, reloptions, rows, changed, dead, inserted in cursor.fetchall():
            table = options(reloptions)
            if not unattended(server, table):
                continue
            vacuum, analyze = due(server, table, rows, changed, dead, inserted)
            if not (vacuum or analyze):
                continue
            # SKIP_LOCKED: a table another session holds a conflicting lock on (a migration, another
            # server's upkeep) waits for the next round instead of holding up this one
            command = "VACUUM" if vacuum else "ANALYZE"
            both = vacuum and analyze
            cursor.execute(f"{command} (SKIP_LOCKED{', ANALYZE' if both else ''}) {connection.ops.quote_name(name)}")
            done.append(f"{command}{' (ANALYZE)' if both else ''} {name}")
    if done:
        log.info("upkeep: %s", "; ".join(done))
    return done
