"""The core tables. Kind-specific content lives in JSON validated by the kind's schemas.

Queue, list and count queries touch only Item (thin rows); the payload sits in
ItemPayload so a 200-step trajectory never slows the queue.

A foreign key that leads an index or unique constraint of its model has no index of its own
(db_index=False): the longer index serves its lookups and cascades, and each index more costs every
insert (an answer, a lease, an audit event per submit) and the planning of every query on the table.
"""

import secrets

from django.conf import settings
from django.db import connection, models
from django.db.models import Q
from django.utils import timezone

from . import rawsql


def queue_moved(project_ids) -> None:
    """Items of these projects may now lie ahead of where a reviewer's last claim found their place: an
    item opened (new, imported, reopened) or its priority changed. The queue then looks for each
    reviewer's place from the top again (annotation/queue.py).

    Call it in the transaction of the change, after its last item lock: it locks the project's
    QueueEpoch row until commit, and taking that row only after item rows, in every transaction,
    keeps two of them from waiting on each other."""
    table = rawsql.table(QueueEpoch)
    with connection.cursor() as cursor:
        for pk in sorted({pk for pk in project_ids if pk is not None}):
            # a new project's epoch starts at a random value: a place remembered for a deleted project
            # never applies to a new one that got its id (SQLite reuses ids)
            cursor.execute(f"INSERT INTO {table} (project_id, value) VALUES (%s, %s) ON CONFLICT (project_id)"
                           f" DO UPDATE SET value = {table}.value + 1", [pk, secrets.randbits(62)])


def _moves_queue(fields) -> bool:
    return fields is None or "priority" in fields or "state" in fields


class Role(models.TextChoices):
    MANAGER = "manager", "Manager"
    REVIEWER = "reviewer", "Reviewer"
    ANNOTATOR = "annotator", "Annotator"
    VIEWER = "viewer", "Viewer"


class Project(models.Model):
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=50, default="lfm_trajectory")
    description = models.TextField(blank=True)
    guidelines = models.TextField(blank=True)
    guidelines_version = models.PositiveIntegerField(default=1)
    answers_per_item = models.PositiveSmallIntegerField(
        default=1, help_text="How many independent answers each item needs."
    )
    lease_minutes = models.PositiveIntegerField(
        default=30, help_text="How long a reviewer holds an item before it returns to the queue."
    )
    # The model loop: when to retrain, how to weigh weak labels, when a new version replaces the old one.
    retrain_every = models.PositiveIntegerField(
        default=200, help_text="Start a training run after this many new final step labels (0: only by hand)."
    )
    llm_label_weight = models.FloatField(
        default=0.3, help_text="Weight of imported LLM labels in training, relative to human final labels (0 to 1)."
    )
    heldout_percent = models.PositiveSmallIntegerField(
        default=20, help_text="Share of items whose human labels are kept for evaluation and never trained on."
    )
    auto_promote = models.BooleanField(
        default=True, help_text="Promote a new model version by itself when it beats the current one."
    )
    promote_margin = models.FloatField(
        default=0.0, help_text="How much higher the held-out F1 must be for automatic promotion."
    )
    base_model = models.CharField(
        max_length=500, blank=True, help_text="Local Hugging Face model folder to fine-tune (empty: the default)."
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="Membership", related_name="projects")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return self.name

    @property
    def kind_spec(self):
        from annotation.kinds import get_kind

        return get_kind(self.kind)


class Membership(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships", db_index=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.ANNOTATOR)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "user"], name="one_membership_per_user")]

    def __str__(self):
        return f"{self.user} in {self.project} as {self.role}"


class ImportJob(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="imports")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL)
    filename = models.CharField(max_length=255)
    path = models.CharField(max_length=500, help_text="Where the uploaded file lies under DATA_DIR.")
    format = models.CharField(max_length=20, default="auto")
    size_bytes = models.BigIntegerField(default=0)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    bytes_read = models.BigIntegerField(default=0)
    lines_read = models.PositiveIntegerField(default=0)
    items_imported = models.PositiveIntegerField(default=0)
    steps_imported = models.PositiveBigIntegerField(default=0)
    errors = models.JSONField(default=list, blank=True)
    error_count = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(
        null=True, blank=True, help_text="Last sign of life of the worker running the import."
    )

    class Meta:
        ordering = ["-created_at"]

    @property
    def progress(self) -> float:
        if self.status == self.Status.SUCCEEDED:
            return 1.0
        return min(1.0, self.bytes_read / self.size_bytes) if self.size_bytes else 0.0


class ItemQuerySet(models.QuerySet):
    """Every write through the ORM that can open an item or change its priority tells the queue
    (queue_moved); the hand-written SQL of the review loop does so itself (annotation/answers.py)."""

    def live(self):
        """Items that finished importing (staged rows of a running import are invisible)."""
        return self.exclude(state=Item.State.STAGED)

    def update(self, **kwargs):
        if not _moves_queue(kwargs) or kwargs.get("state", Item.State.OPEN) in _CLOSED_STATES:
            return super().update(**kwargs)
        projects = set(self.order_by().values_list("project_id", flat=True).distinct())
        updated = super().update(**kwargs)
        if updated:
            queue_moved(projects)
        return updated

    def bulk_update(self, objs, fields, batch_size=None):
        objs = list(objs)
        updated = super().bulk_update(objs, fields, batch_size=batch_size)
        if _moves_queue(fields):
            queue_moved(obj.project_id for obj in objs)
        return updated

    def bulk_create(self, objs, *args, **kwargs):
        created = super().bulk_create(objs, *args, **kwargs)
        queue_moved(obj.project_id for obj in created if obj.state == Item.State.OPEN)
        return created


class Item(models.Model):
    class State(models.TextChoices):
        STAGED = "staged"  # written by an import that has not committed yet
        OPEN = "open"  # needs more answers
        DONE = "done"  # has its answers, final label not settled (disagreement)
        FINAL = "final"  # final label settled

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="items", db_index=False)
    external_id = models.CharField(max_length=255, blank=True)
    seq = models.BigIntegerField(help_text="Import order within the project.")
    state = models.CharField(max_length=10, choices=State.choices, default=State.OPEN)
    priority = models.FloatField(default=0.0, help_text="Higher comes first in the queue.")
    answer_count = models.PositiveSmallIntegerField(default=0)
    step_count = models.PositiveIntegerField(default=0)
    import_job = models.ForeignKey(ImportJob, null=True, blank=True, on_delete=models.SET_NULL, db_index=False)
    created_at = models.DateTimeField(default=timezone.now)

    objects = ItemQuerySet.as_manager()

    class Meta:
        ordering = ["seq"]
        indexes = [
            models.Index(fields=["project", "state", "-priority", "seq"], name="item_queue_idx"),
            models.Index(fields=["project", "seq"], name="item_seq_idx"),
            models.Index(fields=["import_job", "state"], name="item_import_idx"),
        ]

    def __str__(self):
        return self.external_id or f"item {self.pk}"

    def save(self, *args, **kwargs):
        fields = kwargs.get("update_fields")
        moved = self.state == Item.State.OPEN and (self._state.adding or _moves_queue(fields))
        super().save(*args, **kwargs)
        if moved:
            queue_moved([self.project_id])


_CLOSED_STATES = (Item.State.STAGED, Item.State.DONE, Item.State.FINAL)


class QueueEpoch(models.Model):
    """A number that changes whenever an item of the project may have moved ahead of a reviewer's place
    in the queue (queue_moved). Its own table, not a column of Project: a project's settings form holds
    the project row while it settles items (reresolve_project), and a transaction that reopens an item
    holds that item's row when it moves the epoch."""

    project = models.OneToOneField(Project, primary_key=True, on_delete=models.CASCADE, related_name="+")
    value = models.BigIntegerField()


class ItemPayload(models.Model):
    item = models.OneToOneField(Item, primary_key=True, on_delete=models.CASCADE, related_name="payload")
    data = models.JSONField()


class Prediction(models.Model):
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="predictions", db_index=False)
    model_version = models.CharField(max_length=100)
    data = models.JSONField()
    uncertainty = models.FloatField(default=0.0, help_text="0 = certain, 1 = a coin flip.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["item", "-created_at"], name="prediction_latest_idx")]


class Lease(models.Model):
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="leases", db_index=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="leases")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["item", "user"], name="one_lease_per_user_item")]
        indexes = [models.Index(fields=["item", "expires_at"], name="lease_active_idx")]


class Skip(models.Model):
    """A reviewer passed on an item: it comes back to them only when nothing else is left."""

    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="skips", db_index=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="skips")
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["item", "user"], name="one_skip_per_user_item")]


class Answer(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft"
        SUBMITTED = "submitted"
        REJECTED = "rejected"

    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="answers", db_index=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="answers",
                             db_index=False)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DRAFT)
    data = models.JSONField(default=dict)
    time_spent_ms = models.PositiveIntegerField(default=0)
    guidelines_version = models.PositiveIntegerField(default=1)
    model_version = models.CharField(max_length=100, blank=True, help_text="Prediction shown while answering.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        constraints = [models.UniqueConstraint(fields=["item", "user"], name="one_answer_per_user_item")]
        indexes = [
            models.Index(fields=["item", "status"], name="answer_item_idx"),
            models.Index(fields=["user", "status"], name="answer_user_idx"),
            models.Index(fields=["submitted_at"], name="answer_submitted_idx"),
        ]


class Final(models.Model):
    class Method(models.TextChoices):
        ADJUDICATED = "adjudicated"
        UNANIMOUS = "unanimous"
        MAJORITY = "majority"

    item = models.OneToOneField(Item, primary_key=True, on_delete=models.CASCADE, related_name="final")
    data = models.JSONField()
    method = models.CharField(max_length=20, choices=Method.choices)
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    decided_at = models.DateTimeField(default=timezone.now)


class AuditEvent(models.Model):
    project = models.ForeignKey(Project, null=True, blank=True, on_delete=models.CASCADE, related_name="audit",
                                db_index=False)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    verb = models.CharField(max_length=50)
    object_type = models.CharField(max_length=50)
    object_id = models.CharField(max_length=64)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-at"]
        indexes = [models.Index(fields=["project", "-at"], name="audit_project_idx")]

    @classmethod
    def of(cls, *, actor, verb, obj, project=None, before=None, after=None) -> "AuditEvent":
        """The event, not stored yet (`object_id` is blank while `obj` has no id)."""
        return cls(
            project=project,
            actor=actor if getattr(actor, "is_authenticated", False) else None,
            verb=verb,
            object_type=obj._meta.model_name,
            object_id="" if obj.pk is None else str(obj.pk),
            before=before,
            after=after,
        )

    @classmethod
    def record(cls, **event) -> "AuditEvent":
        """Store the event (arguments as for of())."""
        event = cls.of(**event)
        rawsql.insert(event)  # without the ORM's compiler
        return event


class TrainingRun(models.Model):
    """One training job. The app owns its lifecycle (the task queue has no heartbeat): a worker
    claims it, beats while it trains, and a run whose heartbeat stops is retried once or failed."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    ACTIVE = (Status.QUEUED, Status.RUNNING)

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="training_runs")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    reason = models.CharField(max_length=200, blank=True)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    attempt = models.PositiveSmallIntegerField(default=1)
    max_attempts = models.PositiveSmallIntegerField(default=2)
    worker_id = models.CharField(max_length=200, blank=True)
    device = models.CharField(max_length=50, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    cancel_requested = models.BooleanField(default=False)
    progress = models.JSONField(default=dict, blank=True, help_text="{epoch, epochs, step, total_steps, loss}")
    losses = models.JSONField(default=list, blank=True, help_text="[[step, loss], ...] for the loss curve")
    labels_seen = models.PositiveIntegerField(default=0, help_text="Final step labels when the run was queued.")
    error = models.TextField(blank=True)
    model_version = models.ForeignKey("ModelVersion", null=True, blank=True, on_delete=models.SET_NULL,
                                      related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # Debounce at the database: at most one queued run per project.
            models.UniqueConstraint(fields=["project"], condition=Q(status="queued"), name="one_queued_run_per_project"),
        ]


class ModelVersion(models.Model):
    """A trained model: artifacts on disk (content-addressed), lineage and held-out metrics."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="model_versions")
    version = models.CharField(max_length=100, help_text="Content hash of the artifacts (or a name for imports).")
    path = models.CharField(max_length=500, blank=True)
    base_model = models.CharField(max_length=500, blank=True)
    hyperparameters = models.JSONField(default=dict, blank=True)
    seed = models.IntegerField(null=True, blank=True)
    dataset_hash = models.CharField(max_length=64, blank=True)
    feedback_ids = models.JSONField(default=list, blank=True, help_text="[[item_id, step], ...] trained on")
    metrics = models.JSONField(default=dict, blank=True, help_text="On the held-out human labels.")
    baseline_metrics = models.JSONField(default=dict, blank=True,
                                        help_text="The then-promoted version on the same held-out set.")
    training_run = models.ForeignKey(TrainingRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    is_promoted = models.BooleanField(default=False)
    promoted_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["project", "version"], name="one_version_name_per_project"),
            models.UniqueConstraint(fields=["project"], condition=Q(is_promoted=True), name="one_promoted_version"),
        ]

    def __str__(self):
        return self.version


SUBMITTED = Q(status=Answer.Status.SUBMITTED)


class LoginAttempt(models.Model):
    """A password check, kept for the login throttle's window (feedback_app/security.py).

    Each check writes its row before the password is compared, so concurrent guesses count against
    each other; a failed check keeps its row, a successful one deletes the username's rows, a
    refused one deletes its own. Rows older than the window are pruned as new ones are written.
    """

    username = models.CharField(max_length=150, help_text="As typed, case-folded.")
    ip = models.CharField(max_length=64, help_text="The client's address.")
    at = models.DateTimeField(db_index=True)

    class Meta:
        indexes = [
            models.Index(fields=["username", "at"], name="login_attempt_user_idx"),
            models.Index(fields=["ip", "at"], name="login_attempt_ip_idx"),
        ]
