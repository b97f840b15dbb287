"""Keep PostgreSQL's planner statistics current for the app's tables where autovacuum does not.

Prepared statements (DATABASE_PREPARED_STATEMENTS, on by default) keep their generic plan until a table
they read is analyzed again. Autovacuum analyzes a table once enough of it changed; where it is off
(globally, or for a table), nothing does, and a plan made while a table was nearly empty stays as the
table grows: in a 10-minute soak a lookup of one reviewer's answer to one item ran as a sequential
scan of the whole answers table 86,000 times (docs/benchmarks.md). So `manage.py serve` calls
`refresh_statistics` every 15 seconds, and `manage.py refresh_statistics` does it once (for cron where
the server runs elsewhere). It analyzes a table of the app's under autovacuum's own rule (its
`autovacuum_analyze_threshold` plus `autovacuum_analyze_scale_factor` of the rows), and only a table
autovacuum leaves alone; where autovacuum runs it does nothing. ANALYZE reads a sample of the table
and blocks neither reads nor writes.
"""

import logging

from django.db import DEFAULT_DB_ALIAS, connections

log = logging.getLogger(__name__)

_OFF = {"false", "off", "no", "0"}


def options(reloptions: list[str] | None) -> dict[str, str]:
    """A table's storage parameters (pg_class.reloptions, "name=value" strings) as a dict."""
    return dict(option.partition("=")[::2] for option in reloptions or ())


def unattended(autovacuum: str, table: dict[str, str]) -> bool:
    """Whether autovacuum leaves the table alone: off for the server, or off for the table."""
    return autovacuum.lower() in _OFF or table.get("autovacuum_enabled", "on").lower() in _OFF


def due(changed: int, rows: float, threshold: float, scale: float, table: dict[str, str] | None = None) -> bool:
    """Autovacuum's rule for analyzing a table: more rows inserted, updated or deleted since its last
    ANALYZE than the threshold plus the scale factor times the rows it had then (-1: never analyzed).
    A table's own autovacuum_analyze_threshold and _scale_factor win over the server's."""
    table = table or {}
    threshold = float(table.get("autovacuum_analyze_threshold", threshold))
    scale = float(table.get("autovacuum_analyze_scale_factor", scale))
    return changed > threshold + scale * max(rows, 0)


_CANDIDATES = """
SELECT c.relname, c.reloptions, s.n_mod_since_analyze, c.reltuples
FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
WHERE s.schemaname = current_schema() AND c.relname = ANY(%s)
"""


def refresh_statistics(using: str = DEFAULT_DB_ALIAS) -> list[str]:
    """ANALYZE each of the app's tables that autovacuum leaves alone and that changed enough since its
    last ANALYZE. Returns the tables analyzed (none on SQLite, which plans each statement afresh)."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return []
    tables = connection.introspection.django_table_names(only_existing=False, include_views=False)
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('autovacuum'), current_setting('autovacuum_analyze_threshold')::float, "
                       "current_setting('autovacuum_analyze_scale_factor')::float")
        autovacuum, threshold, scale = cursor.fetchone()
        cursor.execute(_CANDIDATES, [tables])
        stale = [name for name, reloptions, changed, rows in cursor.fetchall()
                 if unattended(autovacuum, table := options(reloptions))
                 and due(changed, rows, threshold, scale, table)]
        for name in stale:
            cursor.execute(f"ANALYZE {connection.ops.quote_name(name)}")
    if stale:
        log.info("analyzed %s", ", ".join(stale))
    return stale
