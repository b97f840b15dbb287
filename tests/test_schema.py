"""The database schema as migrated: every foreign key can be looked up by an index.

Foreign keys that lead a longer index have no index of their own (annotation/models.py); this checks
in the migrated database, not in the models, that each still leads one, so that removing the longer
index cannot leave a key (and the cascades through it) to sequential scans."""

from django.apps import apps
from django.db import connection


def test_every_foreign_key_leads_an_index(db):
    missing = []
    with connection.cursor() as cursor:
        for model in apps.get_app_config("annotation").get_models():
            table = model._meta.db_table
            constraints = connection.introspection.get_constraints(cursor, table)
            leading = {c["columns"][0] for c in constraints.values()
                       if (c["index"] or c["unique"] or c["primary_key"]) and c["columns"]}
            for field in model._meta.concrete_fields:
                if field.is_relation and field.column not in leading:
                    missing.append(f"{table}.{field.column}")
    assert not missing, f"foreign keys no index starts with: {missing}"
