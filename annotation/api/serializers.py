"""Thin DRF serializers: the shape of requests and responses.

Kind-specific content (item payloads, answers, predictions, final labels) is
plain JSON here; the kinds validate it with their pydantic schemas, which
GET /api/kinds/ publishes.
"""

from django.contrib.auth import get_user_model
from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.plumbing import ResolvedComponent
from rest_framework import serializers

from ..kinds import KindError, get_kind
from ..models import (
    Answer,
    AuditEvent,
    Final,
    ImportJob,
    Item,
    Membership,
    ModelVersion,
    Prediction,
    Project,
    Role,
    TrainingRun,
)
from ..permissions import ANNOTATE, CAPABILITIES, MANAGE, REVIEW, VIEW

CAPABILITY_CHOICES = [VIEW, ANNOTATE, REVIEW, MANAGE]
MAX_ANSWERS_PER_ITEM = 20
MAX_LEASE_MINUTES = 24 * 60


class NamedEnumField(serializers.ChoiceField):
    """A choice field whose OpenAPI enum is a component with a fixed name.

    Answers and imports both have a `status` field with different values; named
    components keep the two apart in generated clients."""

    def __init__(self, enum_name: str, **kwargs):
        self.enum_name = enum_name
        super().__init__(**kwargs)


class NamedEnumFieldExtension(OpenApiSerializerFieldExtension):
    target_class = NamedEnumField

    def map_serializer_field(self, auto_schema, direction):
        field = self.target
        component = ResolvedComponent(
            name=field.enum_name,
            type=ResolvedComponent.SCHEMA,
            object=field.enum_name,
            schema={"type": "string", "enum": list(field.choices)},
        )
        auto_schema.registry.register_on_missing(component)
        return component.ref


class ErrorEntrySerializer(serializers.Serializer):
    field = serializers.CharField(required=False, allow_null=True)
    message = serializers.CharField()
    line = serializers.IntegerField(required=False, allow_null=True)


class ErrorSerializer(serializers.Serializer):
    """Every error body: `detail` for people, `errors` (when there are several) per field."""

    detail = serializers.CharField()
    errors = ErrorEntrySerializer(many=True, required=False)


# --- projects ----------------------------------------------------------------


class ProjectSerializer(serializers.ModelSerializer):
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    role = serializers.SerializerMethodField(help_text="Your role in the project (site admins act as managers).")
    capabilities = serializers.SerializerMethodField(help_text="What your role allows here.")

    class Meta:
        model = Project
        fields = [
            "id", "name", "kind", "description", "guidelines", "guidelines_version", "answers_per_item",
            "lease_minutes", "created_by", "created_at", "role", "capabilities",
        ]
        read_only_fields = fields

    def _role(self, project) -> str | None:
        roles = self.context.get("roles")
        if roles is not None:
            return roles.get(project.pk)
        return self.context.get("role")

    def get_role(self, project) -> str | None:
        return self._role(project)

    def get_capabilities(self, project) -> list[str]:
        role = self._role(project)
        caps = CAPABILITIES.get(role, set()) if role else set()
        return [c for c in CAPABILITY_CHOICES if c in caps]


class ProjectSettingsMixin:
    def validate_answers_per_item(self, value):
        if not 1 <= value <= MAX_ANSWERS_PER_ITEM:
            raise serializers.ValidationError(f"Between 1 and {MAX_ANSWERS_PER_ITEM} answers per item.")
        return value

    def validate_lease_minutes(self, value):
        if not 1 <= value <= MAX_LEASE_MINUTES:
            raise serializers.ValidationError("Between 1 minute and 24 hours.")
        return value


class ProjectCreateSerializer(ProjectSettingsMixin, serializers.ModelSerializer):
    class Meta:
        model = Project
        fields = ["name", "kind", "description", "guidelines", "answers_per_item", "lease_minutes"]

    def validate_kind(self, value):
        try:
            get_kind(value)
        except KindError as exc:
            raise serializers.ValidationError(str(exc)) from None
        return value


class ProjectUpdateSerializer(ProjectSettingsMixin, serializers.ModelSerializer):
    """The settings a manager may change. A project's kind is fixed once created."""

    class Meta:
        model = Project
        fields = ["name", "description", "guidelines", "answers_per_item", "lease_minutes"]
        extra_kwargs = {"name": {"required": False}}


# --- stats ------------------------------------------------------------------


class AnnotatorStatsSerializer(serializers.Serializer):
    user_id = serializers.IntegerField()
    username = serializers.CharField()
    answers = serializers.IntegerField()
    avg_seconds = serializers.FloatField()


class AgreementSerializer(serializers.Serializer):
    alpha = serializers.FloatField(allow_null=True, help_text="Krippendorff's alpha (nominal) over units.")
    percent = serializers.FloatField(allow_null=True, help_text="Share of units where all labels agree.")
    items = serializers.IntegerField()
    units = serializers.IntegerField(required=False)


class ProjectStatsSerializer(serializers.Serializer):
    items = serializers.IntegerField()
    steps = serializers.IntegerField()
    open = serializers.IntegerField()
    done = serializers.IntegerField()
    final = serializers.IntegerField()
    answers = serializers.IntegerField()
    answers_needed = serializers.IntegerField()
    answers_per_item = serializers.IntegerField()
    progress = serializers.FloatField()
    annotators = AnnotatorStatsSerializer(many=True)
    agreement = AgreementSerializer()
    disagreements = serializers.IntegerField()


# --- members ----------------------------------------------------------------


class MembershipSerializer(serializers.ModelSerializer):
    user_id = serializers.IntegerField(read_only=True)
    username = serializers.CharField(source="user.username", read_only=True)

    class Meta:
        model = Membership
        fields = ["id", "user_id", "username", "role", "created_at"]
        read_only_fields = fields


class MemberAddSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    role = serializers.ChoiceField(choices=Role.choices, default=Role.ANNOTATOR)

    def validate_username(self, value):
        name = value.strip()
        user = get_user_model().objects.filter(username=name).first()
        if user is None:
            raise serializers.ValidationError(f"No user called {name!r}.")
        return user


class MemberRoleSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=Role.choices)


# --- items ------------------------------------------------------------------


class ResponseModelSerializer(serializers.ModelSerializer):
    """A ModelSerializer for responses whose fields depend on the class only: no per-request fields, and
    no field reads the serializer's context. Its fields are built and bound once per class, on an
    instance of their own, and every instance shares them (rendering only reads them). Building them
    for each response (model introspection for every field, then a deep copy) was a tenth of the
    server's CPU in the review loop."""

    @property
    def fields(self):
        cls = type(self)
        shared = cls.__dict__.get("_shared_fields")
        if shared is None:
            prototype = cls.__new__(cls)
            serializers.ModelSerializer.__init__(prototype)
            shared = cls._shared_fields = serializers.ModelSerializer.fields.func(prototype)
        return shared


class ItemRowSerializer(ResponseModelSerializer):
    """A thin item row: no payload."""

    class Meta:
        model = Item
        fields = ["id", "external_id", "seq", "state", "priority", "answer_count", "step_count", "created_at"]
        read_only_fields = fields


class DisagreementRowSerializer(ItemRowSerializer):
    final_method = serializers.CharField(source="final.method", default=None, allow_null=True, read_only=True)

    class Meta(ItemRowSerializer.Meta):
        fields = [*ItemRowSerializer.Meta.fields, "final_method"]
        read_only_fields = fields


class PredictionSerializer(ResponseModelSerializer):
    data = serializers.JSONField(help_text="The kind's prediction schema (see /api/kinds/).")

    class Meta:
        model = Prediction
        fields = ["id", "model_version", "uncertainty", "created_at", "data"]
        read_only_fields = fields


class FinalSerializer(ResponseModelSerializer):
    decided_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    data = serializers.JSONField(help_text="The final label record built by the kind.")

    class Meta:
        model = Final
        fields = ["method", "decided_by", "decided_at", "data"]
        read_only_fields = fields


class AnswerSerializer(ResponseModelSerializer):
    item_id = serializers.IntegerField(read_only=True)
    user_id = serializers.IntegerField(read_only=True)
    username = serializers.CharField(source="user.username", read_only=True)
    reviewed_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    status = NamedEnumField("AnswerStatusEnum", choices=Answer.Status.choices, read_only=True)
    data = serializers.JSONField(help_text="The kind's feedback schema (see /api/kinds/).")

    class Meta:
        model = Answer
        fields = [
            "id", "item_id", "user_id", "username", "status", "time_spent_ms", "guidelines_version",
            "model_version", "created_at", "updated_at", "submitted_at", "reviewed_by", "data",
        ]
        read_only_fields = fields


class LeaseSerializer(serializers.Serializer):
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()


class ItemAgreementSerializer(serializers.Serializer):
    alpha = serializers.FloatField(allow_null=True)
    percent = serializers.FloatField(allow_null=True)
    answers = serializers.IntegerField()


class ItemDetailSerializer(ItemRowSerializer):
    """An item with everything needed to answer or check it. The view attaches the related parts
    (see annotation.api.views.item_detail) so that what a caller may see is decided in one place."""

    payload = serializers.JSONField(source="payload.data", read_only=True,
                                    help_text="The kind's payload schema (see /api/kinds/).")
    prediction = PredictionSerializer(source="api_prediction", allow_null=True, read_only=True,
                                      help_text="The latest model prediction, if any.")
    final = FinalSerializer(source="api_final", allow_null=True, read_only=True,
                            help_text="The final label, once settled.")
    answers = AnswerSerializer(source="api_answers", many=True, read_only=True,
                               help_text="Everyone's answers for reviewers and managers; only your own for others.")
    lease = LeaseSerializer(source="api_lease", allow_null=True, read_only=True,
                            help_text="Your active lease on the item, if you hold one.")
    agreement = ItemAgreementSerializer(
        source="api_agreement", allow_null=True, read_only=True,
        help_text="Agreement between the answers (reviewers, projects with several answers per item).",
    )

    class Meta(ItemRowSerializer.Meta):
        fields = [*ItemRowSerializer.Meta.fields, "payload", "prediction", "final", "answers", "lease", "agreement"]
        read_only_fields = fields


# --- answers and decisions -----------------------------------------------------


class AnswerWriteSerializer(serializers.Serializer):
    data = serializers.JSONField(help_text="An answer in the kind's feedback schema (see /api/kinds/).")
    time_spent_ms = serializers.IntegerField(min_value=0, required=False, default=0)
    draft = serializers.BooleanField(required=False, default=False,
                                     help_text="true: save a draft (partial answers allowed); false: submit.")


class AnswerQuerySerializer(serializers.Serializer):
    next = serializers.BooleanField(required=False, default=False)


class AnswerWithNextSerializer(AnswerSerializer):
    """The answer as submitted, and (asked for with ?next=1) the caller's next item, claimed after it."""

    # not read_only: the schema would then list it as always present
    next_item = ItemDetailSerializer(
        allow_null=True, required=False,
        help_text="Only with ?next=1: the next item, claimed for you as POST next/ claims it, or null when "
                  "nothing is left for you.")

    class Meta(AnswerSerializer.Meta):
        fields = [*AnswerSerializer.Meta.fields, "next_item"]
        read_only_fields = AnswerSerializer.Meta.fields


class AdjudicateSerializer(serializers.Serializer):
    data = serializers.JSONField(help_text="The decided labels, in the kind's feedback schema; every unit needs one.")


class ReviewDecisionSerializer(serializers.Serializer):
    decision = serializers.ChoiceField(choices=["accept", "reject"])
    comment = serializers.CharField(required=False, allow_blank=True, default="", max_length=5000)


# --- imports ----------------------------------------------------------------


class ImportUploadSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="The file to import (JSONL, optionally gzip-compressed).")
    format = serializers.CharField(required=False, default="auto", max_length=20,
                                   help_text='"auto" or one of the kind\'s import formats (see /api/kinds/).')


class ImportJobSerializer(serializers.ModelSerializer):
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    status = NamedEnumField("ImportStatusEnum", choices=ImportJob.Status.choices, read_only=True)
    progress = serializers.FloatField(read_only=True, help_text="0..1, from bytes read.")

    class Meta:
        model = ImportJob
        fields = [
            "id", "filename", "format", "status", "progress", "size_bytes", "bytes_read", "lines_read",
            "items_imported", "steps_imported", "error_count", "created_by", "created_at", "started_at",
            "finished_at",
        ]
        read_only_fields = fields


class ImportJobDetailSerializer(ImportJobSerializer):
    errors = ErrorEntrySerializer(many=True, read_only=True, help_text="Problems found, with line and field.")

    class Meta(ImportJobSerializer.Meta):
        fields = [*ImportJobSerializer.Meta.fields, "errors"]
        read_only_fields = fields


# --- audit ------------------------------------------------------------------


class AuditEventSerializer(serializers.ModelSerializer):
    actor = serializers.SlugRelatedField(slug_field="username", read_only=True)
    before = serializers.JSONField(allow_null=True)
    after = serializers.JSONField(allow_null=True)

    class Meta:
        model = AuditEvent
        fields = ["id", "at", "actor", "verb", "object_type", "object_id", "before", "after"]
        read_only_fields = fields


# --- the model loop -----------------------------------------------------------


class TrainingRunSerializer(serializers.ModelSerializer):
    """A training run without its loss curve."""

    status = NamedEnumField("TrainingRunStatusEnum", choices=TrainingRun.Status.choices, read_only=True)
    requested_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    progress = serializers.JSONField(
        read_only=True, help_text="While it trains: {phase, epoch, epochs, step, total_steps, loss, examples}.")
    model_version = serializers.PrimaryKeyRelatedField(
        read_only=True, allow_null=True, help_text="The id of the model version the run produced.")

    class Meta:
        model = TrainingRun
        fields = [
            "id", "status", "reason", "requested_by", "attempt", "max_attempts", "device", "worker_id", "progress",
            "labels_seen", "error", "cancel_requested", "model_version", "created_at", "started_at", "finished_at",
            "heartbeat_at",
        ]
        read_only_fields = fields


class TrainingRunDetailSerializer(TrainingRunSerializer):
    losses = serializers.JSONField(read_only=True, help_text="The loss curve: [[step, loss], ...].")

    class Meta(TrainingRunSerializer.Meta):
        fields = [*TrainingRunSerializer.Meta.fields, "losses"]
        read_only_fields = fields


class RetrainSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=200,
                                   help_text='Why (default: "requested by <you>").')


class ModelVersionSerializer(serializers.ModelSerializer):
    """A model version without the list of what it was trained on."""

    hyperparameters = serializers.JSONField(read_only=True)
    metrics = serializers.JSONField(
        read_only=True, help_text="On the held-out human labels: accuracy, f1, auroc, ece, n, and training counts.")
    baseline_metrics = serializers.JSONField(
        read_only=True, help_text="The version promoted when this one was trained, on the same held-out labels.")
    training_run = serializers.PrimaryKeyRelatedField(read_only=True, allow_null=True)
    feedback_count = serializers.IntegerField(read_only=True, help_text="How many step labels it was trained on.")

    class Meta:
        model = ModelVersion
        fields = [
            "id", "version", "base_model", "hyperparameters", "seed", "dataset_hash", "metrics", "baseline_metrics",
            "is_promoted", "promoted_at", "training_run", "created_at", "feedback_count",
        ]
        read_only_fields = fields


class ModelVersionDetailSerializer(ModelVersionSerializer):
    feedback_ids = serializers.JSONField(read_only=True, help_text="[[item_id, step], ...] it was trained on.")

    class Meta(ModelVersionSerializer.Meta):
        fields = [*ModelVersionSerializer.Meta.fields, "feedback_ids"]
        read_only_fields = fields


# --- kinds and auth ---------------------------------------------------------


class ExportFormatSerializer(serializers.Serializer):
    name = serializers.CharField()
    label = serializers.CharField()
    extension = serializers.CharField()
    content_type = serializers.CharField()
    description = serializers.CharField()


class KindSerializer(serializers.Serializer):
    name = serializers.CharField()
    label = serializers.CharField()
    import_formats = serializers.DictField(child=serializers.CharField(), help_text="format name -> description")
    export_formats = ExportFormatSerializer(many=True)
    payload_schema = serializers.JSONField(help_text="JSON Schema of an item (one import line).")
    feedback_schema = serializers.JSONField(help_text="JSON Schema of an answer's `data`.")
    prediction_schema = serializers.JSONField(help_text="JSON Schema of a model prediction.")


class TokenRequestSerializer(serializers.Serializer):
    username = serializers.CharField()
    password = serializers.CharField(style={"input_type": "password"})


class TokenSerializer(serializers.Serializer):
    token = serializers.CharField()
