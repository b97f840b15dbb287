"""Vacuum and analyze where autovacuum does not (annotation/dbupkeep.py): autovacuum's rules, and on
PostgreSQL the failures they prevent: a prepared plan made on an empty table that stays as the table
grows, and dead rows that pile up where leases are written and deleted on every answer."""

import threading
import time
from datetime import timedelta

import pytest
from django.contrib.sessions.models import Session
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from annotation.dbupkeep import due, options, unattended, upkeep

# PostgreSQL's defaults
SERVER = {"autovacuum": "on", "autovacuum_analyze_threshold": "50", "autovacuum_analyze_scale_factor": "0.1",
          "autovacuum_vacuum_threshold": "50", "autovacuum_vacuum_scale_factor": "0.2",
          "autovacuum_vacuum_insert_threshold": "1000", "autovacuum_vacuum_insert_scale_factor": "0.2"}


def test_a_table_is_unattended_when_autovacuum_is_off_for_the_server_or_for_it():
    assert unattended({**SERVER, "autovacuum": "off"}, {})
    assert not unattended(SERVER, {})
    assert unattended(SERVER, options(["fillfactor=90", "autovacuum_enabled=false"]))
    assert unattended(SERVER, options(["autovacuum_enabled=OFF"]))
    assert not unattended(SERVER, options(["autovacuum_enabled=true"]))
    assert options(None) == {}


def test_analyze_is_due_by_autovacuums_rule():
    def analyze(rows, changed, table=None):
        return due(SERVER, table or {}, rows, changed, 0, 0)[1]

    assert not analyze(-1, 50)  # never analyzed counts as empty: 50 rows plus a tenth of none
    assert analyze(-1, 51)
    assert not analyze(10_000, 1_050)
    assert analyze(10_000, 1_051)
    # the table's own settings win over the server's
    assert analyze(10_000, 11, options(["autovacuum_analyze_threshold=10", "autovacuum_analyze_scale_factor=0"]))
    assert not analyze(10_000, 1_051, options(["autovacuum_analyze_scale_factor=0.5"]))


def test_vacuum_is_due_for_dead_rows_or_for_inserted_ones():
    def vacuum(rows, dead, inserted, table=None):
        return due(SERVER, table or {}, rows, 0, dead, inserted)[0]

    # the lease table: a few live rows, every answer leaves dead ones
    assert not vacuum(24, 54, 0)
    assert vacuum(24, 55, 0)
    assert not vacuum(10_000, 2_050, 0)
    assert vacuum(10_000, 2_051, 0)
    # rows only inserted: 1,000 plus a fifth of the table
    assert not vacuum(10_000, 0, 3_000)
    assert vacuum(10_000, 0, 3_001)
    assert not vacuum(10_000, 0, 10**9, options(["autovacuum_vacuum_insert_threshold=-1"]))  # off for inserts
    assert not vacuum(10_000, 0, None)  # a server that does not count inserts


def test_nothing_to_do_on_sqlite(db):
    if connection.vendor == "postgresql":
        pytest.skip("SQLite only")
    assert upkeep() == []


def _counts(table):
    """(rows changed since the last ANALYZE, dead rows) as PostgreSQL's statistics have them."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT n_mod_since_analyze, n_dead_tup FROM pg_stat_user_tables "
                       "WHERE relname = %s AND schemaname = current_schema()", [table])
        return cursor.fetchone()


def _wait_for_counts(table, changed=0, dead=0):
    """A backend reports its row counts to the statistics system about once a second when idle."""
    deadline = time.monotonic() + 15
    while True:
        now = _counts(table)
        if now[0] >= changed and now[1] >= dead:
            return
        assert time.monotonic() < deadline, f"{table}: the changed rows were never counted ({now})"
        time.sleep(0.2)


def _plan(statement):
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN EXECUTE {statement}")
        return "\n".join(row[0] for row in cursor.fetchall())


@pytest.fixture
def sessions(transactional_db):
    """The session table, with autovacuum off for it, as every table is where the server runs without
    autovacuum; PostgreSQL only."""
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (set DATABASE_URL)")
    table = Session._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
    yield table
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {table} RESET (autovacuum_enabled)")


def _add_sessions(prefix, count, data="x"):
    expires = timezone.now() + timedelta(days=1)
    Session.objects.bulk_create(Session(session_key=f"{prefix}{i}", session_data=data, expire_date=expires)
                                for i in range(count))


@pytest.mark.postgres
def test_a_prepared_plan_made_on_an_empty_table_is_replaced_once_the_table_grew(sessions):
    table = sessions
    with connection.cursor() as cursor:
        try:
            cursor.execute(f"ANALYZE {table}")  # empty, as in a new deployment
            cursor.execute(f"PREPARE session_data(text) AS SELECT session_data FROM {table} WHERE session_key = $1")
            for _ in range(6):  # the first five runs are planned with their values; then the generic plan stays
                cursor.execute("EXECUTE session_data('k1')")
            assert "Seq Scan" in _plan("session_data('k1')")

            _add_sessions("k", 20_000, data="x" * 100)
            _wait_for_counts(table, changed=20_000)
            assert "Seq Scan" in _plan("session_data('k1')")  # grown, still read in full on every lookup

            assert f"VACUUM (ANALYZE) {table}" in upkeep()  # 20,000 rows inserted and changed
            assert "Index Scan" in _plan("session_data('k1')")
            assert not any(table in done for done in upkeep())  # until it changes enough again
            assert _counts(table)[0] == 0
        finally:
            cursor.execute("DEALLOCATE ALL")


@pytest.mark.postgres
def test_dead_rows_are_vacuumed_away_and_the_command_says_what_ran(sessions, capsys):
    table = sessions
    call_command("db_upkeep")  # whatever earlier tests left
    capsys.readouterr()
    _add_sessions("c", 200)
    _wait_for_counts(table, changed=200)
    call_command("db_upkeep")
    assert f"ANALYZE {table}" in capsys.readouterr().out

    Session.objects.filter(session_key__startswith="c").delete()  # as leases go, on every answer
    _wait_for_counts(table, dead=200)
    assert f"VACUUM (ANALYZE) {table}" in upkeep()
    assert _counts(table) == (0, 0)
    call_command("db_upkeep")
    assert table not in capsys.readouterr().out  # nothing left to do for it


@pytest.mark.postgres
def test_a_table_locked_by_another_session_is_skipped_not_waited_for(sessions):
    import psycopg

    table = sessions
    _add_sessions("l", 200)
    Session.objects.filter(session_key__startswith="l").delete()
    _wait_for_counts(table, changed=400, dead=200)
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("prepare_threshold", None)
    with psycopg.connect(**params) as other:  # a migration, say, holding the table
        other.execute(f"LOCK TABLE {table} IN SHARE UPDATE EXCLUSIVE MODE")
        done = []

        def run():
            try:
                done.extend(upkeep())
            finally:
                connection.close()  # this thread's own

        worker = threading.Thread(target=run)
        worker.start()
        worker.join(timeout=20)
        assert not worker.is_alive(), "the upkeep waited for the lock"
        assert any(d.endswith(f" {table}") for d in done)
        other.rollback()
    assert _counts(table)[0] >= 400  # skipped: still due, for the next round
    assert any(d.endswith(f" {table}") for d in upkeep())
    assert _counts(table)[0] == 0
