"""Foreign keys that lead a longer index or unique constraint lose their own index (annotation/models.py).

The indexes are dropped by name. Django's AlterField would rebuild each table on SQLite and, on
PostgreSQL, drop and re-add (and so re-validate) each foreign key constraint."""

from django.conf import settings
from django.db import migrations, models
import django.db.models.deletion

CASCADE, SET_NULL = django.db.models.deletion.CASCADE, django.db.models.deletion.SET_NULL


def key(to, on_delete, **options):
    """The field as declared now: its own index gone."""
    return lambda: models.ForeignKey(to=to, on_delete=on_delete, db_index=False, **options)


# (model, field, the index Django made for the field, the field as declared now)
FIELDS = [
    ("answer", "item", "annotation_answer_item_id_3d77123a", key("annotation.item", CASCADE, related_name="answers")),
    ("answer", "user", "annotation_answer_user_id_d86f706a",
     key(settings.AUTH_USER_MODEL, CASCADE, related_name="answers")),
    ("auditevent", "project", "annotation_auditevent_project_id_ac66ac08",
     key("annotation.project", CASCADE, related_name="audit", null=True, blank=True)),
    ("item", "import_job", "annotation_item_import_job_id_40292ebe",
     key("annotation.importjob", SET_NULL, null=True, blank=True)),
    ("item", "project", "annotation_item_project_id_2466b61c",
     key("annotation.project", CASCADE, related_name="items")),
    ("lease", "item", "annotation_lease_item_id_2aa4ee97", key("annotation.item", CASCADE, related_name="leases")),
    ("membership", "project", "annotation_membership_project_id_eb697c46",
     key("annotation.project", CASCADE, related_name="memberships")),
    ("prediction", "item", "annotation_prediction_item_id_7d2a4351",
     key("annotation.item", CASCADE, related_name="predictions")),
    ("skip", "item", "annotation_skip_item_id_40cd3982", key("annotation.item", CASCADE, related_name="skips")),
]


class Migration(migrations.Migration):
    dependencies = [
        ("annotation", "0005_login_attempt"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(f'DROP INDEX IF EXISTS "{index}"',
                                  reverse_sql=f'CREATE INDEX "{index}" ON "annotation_{model}" ("{name}_id")')
                for model, name, index, _ in FIELDS
            ],
            state_operations=[
                migrations.AlterField(model_name=model, name=name, field=field())
                for model, name, _, field in FIELDS
            ],
        ),
    ]
