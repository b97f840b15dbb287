"""Planner statistics for tables autovacuum leaves alone (annotation/dbstats.py): the rule, and on
PostgreSQL the failure it prevents, a prepared plan made on an empty table that stays as it grows."""

import time
from datetime import timedelta

import pytest
from django.contrib.sessions.models import Session
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from annotation.dbstats import due, options, refresh_statistics, unattended


def test_a_table_is_unattended_when_autovacuum_is_off_for_the_server_or_for_it():
    assert unattended("off", {})
    assert not unattended("on", {})
    assert unattended("on", options(["fillfactor=90", "autovacuum_enabled=false"]))
    assert unattended("on", options(["autovacuum_enabled=OFF"]))
    assert not unattended("on", options(["autovacuum_enabled=true"]))
    assert options(None) == {}


def test_a_table_is_due_by_autovacuums_rule():
    # the server's defaults: 50 rows plus a tenth of the table
    assert not due(50, -1, 50, 0.1)  # never analyzed: counts as empty
    assert due(51, -1, 50, 0.1)
    assert not due(1_050, 10_000, 50, 0.1)
    assert due(1_051, 10_000, 50, 0.1)
    # the table's own settings win over the server's
    assert due(11, 10_000, 50, 0.1, options(["autovacuum_analyze_threshold=10", "autovacuum_analyze_scale_factor=0"]))
    assert not due(1_051, 10_000, 50, 0.1, options(["autovacuum_analyze_scale_factor=0.5"]))


def test_nothing_to_do_on_sqlite(db):
    if connection.vendor == "postgresql":
        pytest.skip("SQLite only")
    assert refresh_statistics() == []


def _changed_since_analyze(table):
    with connection.cursor() as cursor:
        cursor.execute("SELECT n_mod_since_analyze FROM pg_stat_user_tables "
                       "WHERE relname = %s AND schemaname = current_schema()", [table])
        return cursor.fetchone()[0]


def _wait_for_counts(table, at_least):
    """A backend reports its row counts to the statistics system about once a second when idle."""
    deadline = time.monotonic() + 15
    while _changed_since_analyze(table) < at_least:
        assert time.monotonic() < deadline, f"{table}: the changed rows were never counted"
        time.sleep(0.2)


def _plan(statement):
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN EXECUTE {statement}")
        return "\n".join(row[0] for row in cursor.fetchall())


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_prepared_plan_made_on_an_empty_table_is_replaced_once_the_table_grew():
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (set DATABASE_URL)")
    table = Session._meta.db_table
    with connection.cursor() as cursor:
        # autovacuum off for this table, as it is for all of them where the server runs without it
        cursor.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
        try:
            cursor.execute(f"ANALYZE {table}")  # empty, as in a new deployment
            cursor.execute(f"PREPARE session_data(text) AS SELECT session_data FROM {table} WHERE session_key = $1")
            for _ in range(6):  # the first five runs are planned with their values; then the generic plan stays
                cursor.execute("EXECUTE session_data('k1')")
            assert "Seq Scan" in _plan("session_data('k1')")

            expires = timezone.now() + timedelta(days=1)
            Session.objects.bulk_create(Session(session_key=f"k{i}", session_data="x" * 100, expire_date=expires)
                                        for i in range(20_000))
            _wait_for_counts(table, 20_000)
            assert "Seq Scan" in _plan("session_data('k1')")  # grown, still read in full on every lookup

            assert table in refresh_statistics()
            assert "Index Scan" in _plan("session_data('k1')")
            assert table not in refresh_statistics()  # until it changes enough again
            assert _changed_since_analyze(table) == 0
        finally:
            cursor.execute("DEALLOCATE ALL")
            cursor.execute(f"ALTER TABLE {table} RESET (autovacuum_enabled)")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_command_reports_what_it_analyzed(capsys):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (set DATABASE_URL)")
    table = Session._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
    try:
        call_command("refresh_statistics")  # whatever earlier tests left
        capsys.readouterr()
        expires = timezone.now() + timedelta(days=1)
        Session.objects.bulk_create(Session(session_key=f"c{i}", session_data="x", expire_date=expires)
                                    for i in range(200))
        _wait_for_counts(table, 200)
        call_command("refresh_statistics")
        assert table in capsys.readouterr().out
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {table} RESET (autovacuum_enabled)")
