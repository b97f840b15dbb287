"""Foreign keys that lead a longer index or unique constraint lose their own index (annotation/models.py).

The indexes are dropped by name. Django's AlterField would rebuild each table on SQLite and, on
PostgreSQL, drop and re-add (and so re-validate) each foreign key constraint."""

from django.conf import settings
from django.db import migrations, models
import django.db.models.deletion

# (model, field, the index Django made for the field, what the field is declared as now)
FIELDS = [
    ("answer", "item", "annotation_answer_item_id_3d77123a",
     lambda: models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE,
                               related_name="answers", to="annotation.item")),
    ("answer", "user", "annotation_answer_user_id_d86f706a",
     lambda: models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE,
                               related_name="answers", to=settings.AUTH_USER_MODEL)),
    ("auditevent", "project", "annotation_auditevent_project_id_ac66ac08",
     lambda: models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.CASCADE,
                               related_name="audit", to="annotation.project")),
    ("item", "import_job", "annotation_item_import_job_id_40292ebe",
     lambda: models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.SET_NULL,
                               to="annotation.importjob")),
    ("item", "project", "annotation_item_project_id_2466b61c",
     lambda: models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE,
                               related_name="items", to="annotation.project")),
    ("lease", "item", "annotation_lease_item_id_2aa4ee97",
     lambda: models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE,
                               related_name="leases", to="annotation.item")),
    ("membership", "project", "annotation_membership_project_id_eb697c46",
     lambda: models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE,
                               related_name="memberships", to="annotation.project")),
    ("prediction", "item", "annotation_prediction_item_id_7d2a4351",
     lambda: models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE,
                               related_name="predictions", to="annotation.item")),
    ("skip", "item", "annotation_skip_item_id_40cd3982",
     lambda: models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE,
                               related_name="skips", to="annotation.item")),
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
