"""The REST API. Thin views over the core: permissions, queue, answers, stats, imports, exports, models.

Every view class declares `required_capability` (see annotation/api/permissions.py);
the ProjectCapability permission resolves `project_id` from the URL and checks it.
Errors answer {"detail": "...", "errors": [{"field", "message"}]} with the status of the problem.
"""

import logging
from collections.abc import Mapping

from django.conf import settings
from django.db import transaction
from django.db.models import Case, Func, IntegerField, Q, Value, When
from django.utils import timezone
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.authtoken.models import Token
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.exceptions import APIException
from rest_framework.generics import GenericAPIView
from rest_framework.metadata import SimpleMetadata
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response

from .. import exporting, importing, queue, training
from ..answers import (
    AnswerError,
    adjudicate,
    latest_prediction,
    live_item,
    own_answers,
    reresolve_project,
    review_answer,
    save_draft,
    submit,
)
from ..kinds import KindError, all_kinds, get_kind
from ..models import (
    Answer,
    AuditEvent,
    Final,
    ImportJob,
    Item,
    Lease,
    Membership,
    ModelVersion,
    Project,
    Role,
    TrainingRun,
)
from ..permissions import ANNOTATE, MANAGE, REVIEW, VIEW, visible_projects
from ..stats import item_agreement, project_stats
from ..views.imports import ImportSizeLimit
from . import parsers
from . import serializers as s
from .permissions import ProjectCapability, capability_for

log = logging.getLogger(__name__)

ITEM_STATES = [state for state in Item.State.values if state != Item.State.STAGED]


# --- plumbing -----------------------------------------------------------------


class Pagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


class ApiError(APIException):
    """An error answered as {"detail": message, "errors": [...]} with `status`."""

    def __init__(self, status_code: int, message: str, errors: list[dict] | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.detail = {"detail": message, "errors": list(errors or [])}


def _flatten(errors, prefix="") -> list[dict]:
    out = []
    if isinstance(errors, Mapping):
        for key, value in errors.items():
            name = "" if key == "non_field_errors" else str(key)
            out += _flatten(value, f"{prefix}.{name}" if prefix and name else (name or prefix))
    elif isinstance(errors, list) and errors and all(isinstance(e, str) for e in errors):
        out += [{"field": prefix or None, "message": str(e)} for e in errors]
    elif isinstance(errors, list):
        for i, value in enumerate(errors):
            out += _flatten(value, f"{prefix}.{i}" if prefix else str(i))
    else:
        out.append({"field": prefix or None, "message": str(errors)})
    return out


def validated(serializer_class, data, **kwargs):
    """A serializer whose data is valid, or a 400 with one entry per problem."""
    serializer = serializer_class(data=data, **kwargs)
    if not serializer.is_valid():
        errors = _flatten(serializer.errors)
        message = "; ".join(f"{e['field']}: {e['message']}" if e["field"] else e["message"] for e in errors)
        raise ApiError(400, message or "Invalid request.", errors)
    return serializer


def answer_error(exc: AnswerError) -> ApiError:
    return ApiError(exc.status, exc.message, exc.errors)


class CapabilitySchema(AutoSchema):
    """Adds the capability a view needs to its description in the OpenAPI document."""

    def get_description(self):
        description = super().get_description() or ""
        capability = capability_for(self.view, self.method)
        if capability is not None:
            note = f"Needs the `{capability}` capability in the project."
            description = f"{description}\n\n{note}" if description else note
        return description


ERRORS = {
    400: OpenApiResponse(s.ErrorSerializer, description="Invalid request."),
    401: OpenApiResponse(s.ErrorSerializer, description="Not authenticated."),
    403: OpenApiResponse(s.ErrorSerializer, description="Your role may not do this."),
    404: OpenApiResponse(s.ErrorSerializer, description="No such project (or not a member), or no such object."),
    409: OpenApiResponse(s.ErrorSerializer, description="Conflicts with the current state."),
}


def errors(*codes) -> dict:
    return {code: ERRORS[code] for code in codes}


class ApiMetadata(SimpleMetadata):
    """OPTIONS: name, description, renders and parses. Request bodies are described by /api/schema/ (the
    views have no single serializer for DRF to describe; asking for one made OPTIONS a 500)."""

    def determine_actions(self, request, view):
        return {}


class ApiView(GenericAPIView):
    """Base of every API view: authentication, the capability check, pagination, schema."""

    permission_classes = [IsAuthenticated, ProjectCapability]
    metadata_class = ApiMetadata
    pagination_class = Pagination
    schema = CapabilitySchema()
    required_capability: str | dict | None = None
    project_url_kwarg = "project_id"
    project: Project

    def initial(self, request, *args, **kwargs):
        # PostgreSQL cannot hold NUL in text: refuse it in any parameter before it reaches a query
        for name, values in request.query_params.lists():
            if any("\x00" in v for v in (name, *values)):
                field = name.replace("\x00", "\\u0000")
                message = f"{field}: NUL characters (\\u0000) are not allowed in a parameter."
                raise ApiError(400, message, [{"field": field, "message": message}])
        super().initial(request, *args, **kwargs)

    def handle_exception(self, exc):
        return super().handle_exception(parsers.api_error(exc))

    def paginated(self, queryset, serializer_class, **kwargs):
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(serializer_class(page, many=True, **kwargs).data)

    def get_item(self, item_id, *, with_payload=True, with_final=False) -> Item:
        if not with_final:
            item = live_item(self.project, item_id, with_payload=with_payload)
            if item is None:
                raise ApiError(404, "No such item in this project.")
            item.project = self.project
            return item
        # the final label and its decider in the same query (read by item_detail)
        qs = Item.objects.live().filter(project=self.project).select_related("final__decided_by")
        if with_payload:
            qs = qs.select_related("payload")
        item = qs.filter(pk=item_id).first()
        if item is None:
            raise ApiError(404, "No such item in this project.")
        item.project = self.project
        return item


_UNKNOWN = object()


def item_detail(item: Item, user, caps, project: Project, *, lease=_UNKNOWN) -> Item:
    """Attach what `user` may see of `item` (read by ItemDetailSerializer).

    Everyone in the project sees the payload, the latest prediction and the final label;
    reviewers and managers see every answer, everyone else only their own. `lease`: the user's
    active lease when the caller has just taken or renewed it (saves reading it back)."""
    item.api_prediction = latest_prediction(item)
    if not hasattr(item, "api_final"):  # unless the caller knows it already
        if Item.final.is_cached(item):  # loaded with the item (get_item(with_final=True))
            item.api_final = getattr(item, "final", None)
        else:
            item.api_final = Final.objects.filter(item=item).select_related("decided_by").first()
    if REVIEW in caps:
        item.api_answers = list(Answer.objects.filter(item=item).select_related("user", "reviewed_by").order_by("pk"))
    else:
        item.api_answers = own_answers(item, user)
    if lease is _UNKNOWN:
        lease = Lease.objects.filter(item=item, user=user, expires_at__gt=timezone.now()).first()
    item.api_lease = lease
    item.api_agreement = (
        item_agreement(item) if REVIEW in caps and project.answers_per_item > 1 else None
    )
    return item


PROJECT_ID = OpenApiParameter("project_id", OpenApiTypes.INT, OpenApiParameter.PATH, description="The project.")


# --- auth ---------------------------------------------------------------------


class TokenView(ApiView):
    """Exchange a username and password for an API token (the same token on every call)."""

    required_capability = None
    permission_classes = []
    authentication_classes = []
    pagination_class = None

    @extend_schema(
        operation_id="auth_token", summary="Get an API token",
        tags=["auth"],
        request=s.TokenRequestSerializer,
        responses={200: s.TokenSerializer, **errors(400)},
        auth=[],
    )
    def post(self, request):
        serializer = validated(AuthTokenSerializer, request.data, context={"request": request})
        token, _ = Token.objects.get_or_create(user=serializer.validated_data["user"])
        return Response({"token": token.key})


# --- projects -----------------------------------------------------------------


class ProjectListView(ApiView):
    """The projects you are a member of (all of them for site admins); site staff create projects."""

    required_capability = None

    @extend_schema(operation_id="projects_list", summary="List your projects", tags=["projects"],
                   responses={200: s.ProjectSerializer(many=True), **errors(401)})
    def get(self, request):
        user = request.user
        projects = visible_projects(user).select_related("created_by").order_by("name", "pk")
        if user.is_superuser:
            roles = {pk: Role.MANAGER for pk in Project.objects.values_list("pk", flat=True)}
        else:
            roles = dict(Membership.objects.filter(user=user).values_list("project_id", "role"))
        return self.paginated(projects, s.ProjectSerializer, context={"roles": roles})

    @extend_schema(operation_id="projects_create", summary="Create a project (site staff)",
                   tags=["projects"], request=s.ProjectCreateSerializer,
                   responses={201: s.ProjectSerializer, **errors(400, 401, 403)})
    def post(self, request):
        if not request.user.is_staff:
            raise ApiError(403, "Only site staff create projects.")
        serializer = validated(s.ProjectCreateSerializer, request.data)
        with transaction.atomic():
            project = serializer.save(created_by=request.user)
            Membership.objects.create(project=project, user=request.user, role=Role.MANAGER)
            AuditEvent.record(actor=request.user, verb="project.created", obj=project, project=project,
                              after={"name": project.name, "kind": project.kind})
        return Response(s.ProjectSerializer(project, context={"role": Role.MANAGER}).data,
                        status=status.HTTP_201_CREATED)


class ProjectDetailView(ApiView):
    """A project's settings. Managers change them; a change of guidelines bumps guidelines_version."""

    required_capability = {"GET": VIEW, "PATCH": MANAGE}

    @extend_schema(operation_id="project_retrieve", summary="Get a project",
                   tags=["projects"], parameters=[PROJECT_ID],
                   responses={200: s.ProjectSerializer, **errors(401, 404)})
    def get(self, request, project_id):
        return Response(s.ProjectSerializer(self.project, context={"role": self.project_role}).data)

    @extend_schema(operation_id="project_update", summary="Change a project's settings",
                   tags=["projects"], parameters=[PROJECT_ID],
                   request=s.ProjectUpdateSerializer(partial=True),
                   responses={200: s.ProjectSerializer, **errors(400, 401, 403, 404)})
    def patch(self, request, project_id):
        if not isinstance(request.data, Mapping):
            raise ApiError(400, "Send a JSON object with the settings to change.")
        allowed = set(s.ProjectUpdateSerializer.Meta.fields)
        if "kind" in request.data and request.data["kind"] != self.project.kind:
            raise ApiError(400, "A project's kind is fixed once created.",
                           [{"field": "kind", "message": "read-only"}])
        unknown = sorted(set(request.data) - allowed - {"kind"})
        if unknown:
            raise ApiError(400, f"Not a setting you can change: {', '.join(unknown)}.",
                           [{"field": f, "message": "unknown or read-only"} for f in unknown])
        serializer = validated(s.ProjectUpdateSerializer, request.data, instance=self.project, partial=True)
        with transaction.atomic():
            project = Project.objects.select_for_update().get(pk=self.project.pk)
            changed = {f: v for f, v in serializer.validated_data.items() if getattr(project, f) != v}
            if changed:
                before = {f: getattr(project, f) for f in changed}
                after = dict(changed)
                if "guidelines" in changed:
                    before["guidelines_version"] = project.guidelines_version
                    project.guidelines_version += 1
                    after["guidelines_version"] = project.guidelines_version
                for field, value in changed.items():
                    setattr(project, field, value)
                project.save()
                AuditEvent.record(actor=request.user, verb="project.settings", obj=project, project=project,
                                  before=before, after=after)
        if "answers_per_item" in changed:
            reresolve_project(project)
        return Response(s.ProjectSerializer(project, context={"role": self.project_role}).data)


class ProjectStatsView(ApiView):
    """Progress, per-annotator counts and agreement, as on the dashboard."""

    required_capability = VIEW

    @extend_schema(operation_id="project_stats", summary="Project progress and agreement",
                   tags=["projects"], parameters=[PROJECT_ID],
                   responses={200: s.ProjectStatsSerializer, **errors(401, 403, 404)})
    def get(self, request, project_id):
        return Response(project_stats(self.project))


# --- members ------------------------------------------------------------------


def _lock_project(project: Project) -> None:
    """Serialise membership changes of one project (the last-manager rule counts, then writes)."""
    Project.objects.select_for_update().filter(pk=project.pk).values_list("pk", flat=True).first()


def _is_last_manager(membership: Membership) -> bool:
    if membership.role != Role.MANAGER:
        return False
    return not Membership.objects.filter(project_id=membership.project_id, role=Role.MANAGER).exclude(
        pk=membership.pk).exists()


LAST_MANAGER = "A project needs at least one manager."


class MemberListView(ApiView):
    """The project's members. Adding a user who is already a member changes their role."""

    required_capability = MANAGE

    @extend_schema(operation_id="members_list", summary="List members",
                   tags=["members"], parameters=[PROJECT_ID],
                   responses={200: s.MembershipSerializer(many=True), **errors(401, 403, 404)})
    def get(self, request, project_id):
        rows = Membership.objects.filter(project=self.project).select_related("user").order_by(
            "role", "user__username")
        return self.paginated(rows, s.MembershipSerializer)

    @extend_schema(operation_id="members_add", summary="Add a member (or change their role)",
                   tags=["members"], parameters=[PROJECT_ID],
                   request=s.MemberAddSerializer,
                   responses={201: s.MembershipSerializer, 200: s.MembershipSerializer,
                              **errors(400, 401, 403, 404, 409)})
    def post(self, request, project_id):
        serializer = validated(s.MemberAddSerializer, request.data)
        user, role = serializer.validated_data["username"], serializer.validated_data["role"]
        with transaction.atomic():
            _lock_project(self.project)
            existing = Membership.objects.filter(project=self.project, user=user).first()
            if existing is not None and role != Role.MANAGER and _is_last_manager(existing):
                raise ApiError(409, LAST_MANAGER)
            before = {"user": user.username, "role": existing.role} if existing else None
            membership, created = Membership.objects.update_or_create(
                project=self.project, user=user, defaults={"role": role})
            AuditEvent.record(actor=request.user, verb="member.role", obj=membership, project=self.project,
                              before=before, after={"user": user.username, "role": role})
        return Response(s.MembershipSerializer(membership).data,
                        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class MemberDetailView(ApiView):
    """One membership: change the role or remove it. The last manager can be neither demoted nor removed."""

    required_capability = MANAGE

    def get_membership(self, membership_id) -> Membership:
        membership = Membership.objects.filter(project=self.project, pk=membership_id).select_related("user").first()
        if membership is None:
            raise ApiError(404, "No such member in this project.")
        return membership

    @extend_schema(operation_id="member_retrieve", summary="Get a membership",
                   tags=["members"], parameters=[PROJECT_ID],
                   responses={200: s.MembershipSerializer, **errors(401, 403, 404)})
    def get(self, request, project_id, membership_id):
        return Response(s.MembershipSerializer(self.get_membership(membership_id)).data)

    @extend_schema(operation_id="member_update", summary="Change a member's role",
                   tags=["members"], parameters=[PROJECT_ID],
                   request=s.MemberRoleSerializer,
                   responses={200: s.MembershipSerializer, **errors(400, 401, 403, 404, 409)})
    def patch(self, request, project_id, membership_id):
        role = validated(s.MemberRoleSerializer, request.data).validated_data["role"]
        with transaction.atomic():
            _lock_project(self.project)
            membership = self.get_membership(membership_id)
            if membership.role != role:
                if role != Role.MANAGER and _is_last_manager(membership):
                    raise ApiError(409, LAST_MANAGER)
                before = {"user": membership.user.username, "role": membership.role}
                membership.role = role
                membership.save(update_fields=["role"])
                AuditEvent.record(actor=request.user, verb="member.role", obj=membership, project=self.project,
                                  before=before, after={"user": membership.user.username, "role": role})
        return Response(s.MembershipSerializer(membership).data)

    @extend_schema(operation_id="member_remove", summary="Remove a member",
                   tags=["members"], parameters=[PROJECT_ID],
                   responses={204: None, **errors(401, 403, 404, 409)})
    def delete(self, request, project_id, membership_id):
        with transaction.atomic():
            _lock_project(self.project)
            membership = self.get_membership(membership_id)
            if _is_last_manager(membership):
                raise ApiError(409, LAST_MANAGER)
            AuditEvent.record(actor=request.user, verb="member.removed", obj=membership, project=self.project,
                              before={"user": membership.user.username, "role": membership.role})
            membership.delete()
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- items --------------------------------------------------------------------


class ItemListView(ApiView):
    """Items in import order, as thin rows (no payload)."""

    required_capability = VIEW

    @extend_schema(
        operation_id="items_list", summary="List items", tags=["items"],
        parameters=[
            PROJECT_ID,
            OpenApiParameter("state", OpenApiTypes.STR, enum=ITEM_STATES, description="Only items in this state."),
            OpenApiParameter("external_id", OpenApiTypes.STR, description="Only the item(s) with this external id."),
        ],
        responses={200: s.ItemRowSerializer(many=True), **errors(400, 401, 403, 404)},
    )
    def get(self, request, project_id):
        qs = Item.objects.live().filter(project=self.project)
        state = request.query_params.get("state", "")
        if state:
            if state not in ITEM_STATES:
                raise ApiError(400, f"Unknown state {state!r}; one of {', '.join(ITEM_STATES)}.",
                               [{"field": "state", "message": "unknown state"}])
            qs = qs.filter(state=state)
        external_id = request.query_params.get("external_id")
        if external_id is not None:
            qs = qs.filter(external_id=external_id)
        qs = qs.order_by("seq").only(*s.ItemRowSerializer.Meta.fields)
        return self.paginated(qs, s.ItemRowSerializer)


class ItemDetailView(ApiView):
    """One item with its payload, latest prediction, final label, and the answers you may see."""

    required_capability = VIEW

    @extend_schema(operation_id="item_retrieve", summary="Get an item",
                   tags=["items"], parameters=[PROJECT_ID],
                   responses={200: s.ItemDetailSerializer, **errors(401, 403, 404)})
    def get(self, request, project_id, item_id):
        item = item_detail(self.get_item(item_id), request.user, self.project_caps, self.project)
        return Response(s.ItemDetailSerializer(item).data)


# --- queue and answers -----------------------------------------------------------


class NextItemView(ApiView):
    """Claim the next item (or get back the one you hold) with a lease; 204 when none is left for you."""

    required_capability = ANNOTATE

    @extend_schema(operation_id="queue_next", summary="Claim the next item",
                   tags=["queue"], parameters=[PROJECT_ID], request=None,
                   responses={200: s.ItemDetailSerializer,
                              204: OpenApiResponse(description="Nothing left for you in this project."),
                              **errors(401, 403, 404)})
    def post(self, request, project_id):
        item = claim_next(self, request.user)
        if item is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(s.ItemDetailSerializer(item).data)


def claim_next(view: ApiView, user) -> Item | None:
    """Claim the user's next item in the view's project, ready for ItemDetailSerializer; None when
    nothing is left for them."""
    # The claim reads the item with its payload and prediction, and the caller's own answer (a draft, if
    # any) unless they see every answer
    item = queue.next_item(view.project, user, with_payload=True,
                           answer_of=None if REVIEW in view.project_caps else user)
    if item is None:
        return None
    item.project = view.project
    # A claimable item is open, and an open item has no final label (resolve_final): none is read.
    if item.state == Item.State.OPEN:
        item.api_final = None
    return item_detail(item, user, view.project_caps, view.project, lease=item.claimed_lease)


class AnswerView(ApiView):
    """Save a draft (`draft: true`) or submit your answer to an item.

    Submitting the same answer twice stores it once (200). Submitting a changed answer edits
    yours (200, audited) unless a reviewer has adjudicated the item (409).

    With `?next=1` a submit also claims your next item, as POST next/ does, and returns it in
    `next_item` (null when nothing is left for you): one round trip per answer instead of two. The
    answer is committed before the claim; should the claim fail (503), the answer is stored and the
    same submit again (200) claims the next item."""

    required_capability = ANNOTATE

    @extend_schema(
        operation_id="item_answer", summary="Save a draft or submit an answer",
        tags=["queue"], request=s.AnswerWriteSerializer,
        parameters=[PROJECT_ID, OpenApiParameter(
            "next", OpenApiTypes.BOOL, default=False,
            description="With a submit: also claim your next item and return it in `next_item`.")],
        responses={201: OpenApiResponse(s.AnswerWithNextSerializer,
                                        description="Submitted (`next_item` only with ?next=1)."),
                   200: OpenApiResponse(s.AnswerWithNextSerializer,
                                        description="Draft saved, or already submitted / edited."),
                   **errors(400, 401, 403, 404, 409)},
        examples=[OpenApiExample("Submit", request_only=True, value={
            "data": {"steps": [{"step": 0, "verdict": "agree"}, {"step": 1, "verdict": "disagree",
                                                                   "reason": "wanders"}], "notes": ""},
            "time_spent_ms": 41000, "draft": False})],
    )
    def post(self, request, project_id, item_id):
        then_next = ("next" in request.query_params
                     and validated(s.AnswerQuerySerializer, request.query_params).validated_data["next"])
        body = validated(s.AnswerWriteSerializer, request.data).validated_data
        if then_next and body["draft"]:
            raise ApiError(400, "next: a draft keeps you on this item; ask for the next item with a submit.",
                           [{"field": "next", "message": "only with a submit (draft: false)"}])
        try:
            if body["draft"]:
                item = self.get_item(item_id)
                answer, created = save_draft(item, request.user, body["data"], body["time_spent_ms"]), False
            else:
                # submit() reads the item with its payload under the row lock it takes anyway (404 if the
                # project has no such live item): one read instead of two
                result = submit(Item(pk=item_id, project=self.project), request.user, body["data"],
                                body["time_spent_ms"])
                answer, created = result.answer, result.created
        except AnswerError as exc:
            raise answer_error(exc) from None
        if body["draft"]:
            answer = Answer.objects.select_related("user", "reviewed_by").get(pk=answer.pk)
        else:
            # submit() returns the answer as stored; only its user (the caller) is not attached yet
            answer.user = request.user
        serializer = s.AnswerSerializer
        if then_next:  # after the submit's commit: a failed claim loses no answer
            answer.next_item, serializer = claim_next(self, request.user), s.AnswerWithNextSerializer
        return Response(serializer(answer).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class SkipView(ApiView):
    """Give the item back to the queue (drops your lease; a draft stays yours)."""

    required_capability = ANNOTATE

    @extend_schema(operation_id="item_skip", summary="Skip an item",
                   tags=["queue"], parameters=[PROJECT_ID], request=None,
                   responses={204: None, **errors(401, 403, 404)})
    def post(self, request, project_id, item_id):
        queue.skip(self.get_item(item_id, with_payload=False), request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- review -------------------------------------------------------------------


class DisagreementListView(ApiView):
    """Items whose answers disagree: ties waiting for a reviewer (state done) first, then the items
    whose final label was settled by majority only (a reviewer may confirm or override them)."""

    required_capability = REVIEW

    @extend_schema(operation_id="disagreements_list", summary="List items with disagreeing answers",
                   tags=["review"], parameters=[PROJECT_ID],
                   responses={200: s.DisagreementRowSerializer(many=True), **errors(401, 403, 404)})
    def get(self, request, project_id):
        qs = Item.objects.live().filter(project=self.project)
        # With one answer per item only ties can occur (a step left "unsure"); the same rule covers both.
        qs = qs.filter(Q(state=Item.State.DONE) | Q(state=Item.State.FINAL, final__method=Final.Method.MAJORITY))
        # ties (no final label yet) first, then the items settled by majority
        qs = qs.select_related("final").alias(
            settled=Case(When(state=Item.State.DONE, then=Value(0)), default=Value(1), output_field=IntegerField())
        ).order_by("settled", "seq")
        return self.paginated(qs, s.DisagreementRowSerializer)


class AdjudicateView(ApiView):
    """Decide the final label of every unit of an item; it wins over later answers."""

    required_capability = REVIEW

    @extend_schema(operation_id="item_adjudicate", summary="Decide an item's final label",
                   tags=["review"], parameters=[PROJECT_ID],
                   request=s.AdjudicateSerializer, responses={200: s.FinalSerializer, **errors(400, 401, 403, 404)})
    def post(self, request, project_id, item_id):
        item = self.get_item(item_id)
        data = validated(s.AdjudicateSerializer, request.data).validated_data["data"]
        try:
            final = adjudicate(item, request.user, data)
        except AnswerError as exc:
            raise answer_error(exc) from None
        final = Final.objects.select_related("decided_by").get(pk=final.pk)
        return Response(s.FinalSerializer(final).data)


class ReviewAnswerView(ApiView):
    """Accept a submitted answer, or reject it (the item goes back to the queue for another answer)."""

    required_capability = REVIEW

    @extend_schema(operation_id="answer_review", summary="Accept or reject an answer",
                   tags=["review"], parameters=[PROJECT_ID],
                   request=s.ReviewDecisionSerializer,
                   responses={200: s.AnswerSerializer, **errors(400, 401, 403, 404, 409)})
    def post(self, request, project_id, answer_id):
        body = validated(s.ReviewDecisionSerializer, request.data).validated_data
        answer = Answer.objects.filter(pk=answer_id, item__project=self.project).exclude(
            item__state=Item.State.STAGED).first()
        if answer is None:
            raise ApiError(404, "No such answer in this project.")
        try:
            answer = review_answer(answer, request.user, accept=body["decision"] == "accept",
                                   comment=body["comment"])
        except AnswerError as exc:
            raise answer_error(exc) from None
        answer = Answer.objects.select_related("user", "reviewed_by").get(pk=answer.pk)
        return Response(s.AnswerSerializer(answer).data)


# --- imports and exports ------------------------------------------------------


class ImportListView(ApiView):
    """Upload a file to import (it runs in the background), and list past imports."""

    required_capability = MANAGE
    parser_classes = [parsers.MultiPartParser, parsers.FormParser]

    def initial(self, request, *args, **kwargs):
        if request.method == "POST":
            # before anything reads the body: the size limit must see the upload as it streams in
            request._request.upload_handlers.insert(0, ImportSizeLimit(request._request))
        super().initial(request, *args, **kwargs)

    @extend_schema(operation_id="imports_list", summary="List imports",
                   tags=["imports"], parameters=[PROJECT_ID],
                   responses={200: s.ImportJobSerializer(many=True), **errors(401, 403, 404)})
    def get(self, request, project_id):
        jobs = ImportJob.objects.filter(project=self.project).select_related("created_by")
        jobs = jobs.order_by("-created_at", "-pk")
        return self.paginated(jobs, s.ImportJobSerializer)

    @extend_schema(operation_id="imports_create", summary="Upload a file to import",
                   tags=["imports"], parameters=[PROJECT_ID],
                   request={"multipart/form-data": s.ImportUploadSerializer},
                   responses={202: s.ImportJobDetailSerializer, **errors(400, 401, 403, 404)})
    def post(self, request, project_id):
        data = request.data
        if getattr(request._request, "import_upload_too_big", False):
            message = importing._too_big(settings.IMPORT_MAX_BYTES)
            raise ApiError(400, message, [{"field": "file", "message": message}])
        body = validated(s.ImportUploadSerializer, data).validated_data
        upload = body["file"]
        try:
            job = importing.create_import_job(self.project, request.user, upload, upload.name, fmt=body["format"])
        except importing.ImportRejected as exc:
            raise ApiError(400, str(exc), [{"field": "file", "message": str(exc)}]) from None
        return Response(s.ImportJobDetailSerializer(job).data, status=status.HTTP_202_ACCEPTED)


class ImportDetailView(ApiView):
    """One import: status, progress, counts and the problems found (line, field, message)."""

    required_capability = MANAGE

    @extend_schema(operation_id="import_retrieve", summary="Get an import's status",
                   tags=["imports"], parameters=[PROJECT_ID],
                   responses={200: s.ImportJobDetailSerializer, **errors(401, 403, 404)})
    def get(self, request, project_id, job_id):
        job = ImportJob.objects.filter(project=self.project, pk=job_id).select_related("created_by").first()
        if job is None:
            raise ApiError(404, "No such import in this project.")
        return Response(s.ImportJobDetailSerializer(job).data)


class ExportView(ApiView):
    """Stream the project's labels as a file in one of the export formats."""

    required_capability = MANAGE

    def perform_content_negotiation(self, request, force=False):
        # `format` names the export format here, not a DRF renderer; errors still render as JSON.
        return super().perform_content_negotiation(request, force=True)

    @extend_schema(
        operation_id="project_export", summary="Export labels", tags=["exports"],
        parameters=[
            PROJECT_ID,
            OpenApiParameter("format", OpenApiTypes.STR, default="jsonl",
                             description="An export format: `jsonl` (one record per item) or one of the kind's "
                                         "formats listed by /api/kinds/."),
            OpenApiParameter("final_only", OpenApiTypes.BOOL, description="Only items with a final label."),
            OpenApiParameter("since", OpenApiTypes.STR,
                             description="Only answers submitted and final labels decided from this date "
                                         "(YYYY-MM-DD, a whole UTC day) or ISO 8601 date-time on."),
            OpenApiParameter("until", OpenApiTypes.STR,
                             description="Only answers submitted and final labels decided up to this date "
                                         "(included) or date-time."),
            OpenApiParameter("annotator", OpenApiTypes.STR,
                             description="Only items this user answered, and only their answers."),
        ],
        responses={(200, "application/octet-stream"): OpenApiResponse(
            OpenApiTypes.BINARY, description="The file, streamed (JSONL or CSV by format)."),
            **errors(400, 401, 403, 404)},
    )
    def get(self, request, project_id):
        formats = exporting.available_formats(self.project)
        fmt = request.query_params.get("format") or "jsonl"
        if fmt not in formats:
            raise ApiError(400, f"Unknown export format {fmt!r}; one of {', '.join(formats)}.",
                           [{"field": "format", "message": "unknown format"}])
        try:
            filters = exporting.ExportFilters.from_params(request.query_params)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        # the Django request: under ASGI the export then streams chunk by chunk
        return exporting.export_response(self.project, fmt, filters, request=request._request)


# --- the model loop ---------------------------------------------------------------

RUN_STATES = list(TrainingRun.Status.values)


class JSONArrayLength(Func):
    """The length of a JSON array column (0 for anything else), without loading the array."""

    function = "JSON_ARRAY_LENGTH"
    output_field = IntegerField()

    def as_postgresql(self, compiler, connection, **extra_context):
        sql, params = compiler.compile(self.source_expressions[0])
        return (f"CASE WHEN jsonb_typeof({sql}) = 'array' THEN jsonb_array_length({sql}) ELSE 0 END",
                (*params, *params))


def model_versions(project: Project):
    """The project's versions with `feedback_count`; the list of feedback ids itself stays in the database."""
    return (ModelVersion.objects.filter(project=project).defer("feedback_ids")
            .annotate(feedback_count=JSONArrayLength("feedback_ids")))


RUN_ID = OpenApiParameter("run_id", OpenApiTypes.INT, OpenApiParameter.PATH, description="The training run.")
VERSION_ID = OpenApiParameter("version_id", OpenApiTypes.INT, OpenApiParameter.PATH, description="The model version.")


class RunMixin:
    def get_run(self, run_id) -> TrainingRun:
        run = (TrainingRun.objects.filter(project=self.project, pk=run_id)
               .select_related("requested_by").first())
        if run is None:
            raise ApiError(404, "No such training run in this project.")
        return run


class RunListView(RunMixin, ApiView):
    """Training runs, newest first ("Retrain now" with POST). Runs whose worker stopped sending heartbeats
    are re-queued or failed on the way, as on the Models page."""

    required_capability = MANAGE

    @extend_schema(
        operation_id="runs_list", summary="List training runs", tags=["models"],
        parameters=[PROJECT_ID, OpenApiParameter("status", OpenApiTypes.STR, enum=RUN_STATES,
                                                 description="Only runs in this state.")],
        responses={200: s.TrainingRunSerializer(many=True), **errors(400, 401, 403, 404)},
    )
    def get(self, request, project_id):
        try:
            training.reap_stale_runs(project=self.project)
        except Exception:  # noqa: BLE001 - the list shows what there is even if the reaper fails
            log.exception("reaping stale runs of project %s failed", self.project.pk)
        qs = TrainingRun.objects.filter(project=self.project).select_related("requested_by").defer("losses")
        state = request.query_params.get("status", "")
        if state:
            if state not in RUN_STATES:
                raise ApiError(400, f"Unknown status {state!r}; one of {', '.join(RUN_STATES)}.",
                               [{"field": "status", "message": "unknown status"}])
            qs = qs.filter(status=state)
        return self.paginated(qs.order_by("-created_at", "-pk"), s.TrainingRunSerializer)

    @extend_schema(
        operation_id="runs_create", summary="Retrain now", tags=["models"], parameters=[PROJECT_ID],
        request=s.RetrainSerializer,
        responses={201: OpenApiResponse(s.TrainingRunDetailSerializer, description="A run is queued."),
                   200: OpenApiResponse(s.TrainingRunDetailSerializer,
                                        description="A run was queued already (a project has one queued run at "
                                                    "most); it trains on every label there is when it starts."),
                   **errors(400, 401, 403, 404, 409)},
    )
    def post(self, request, project_id):
        body = validated(s.RetrainSerializer, request.data if isinstance(request.data, Mapping) else {})
        reason = body.validated_data["reason"].strip() or f"requested by {request.user.get_username()}"
        run, created = training.queue_run(self.project, request.user, reason=reason)
        if run is None:  # the queued run was claimed by a worker at that very moment
            raise ApiError(409, "A run was starting; try again.")
        run = self.get_run(run.pk)
        return Response(s.TrainingRunDetailSerializer(run).data,
                        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class RunDetailView(RunMixin, ApiView):
    """One training run with its loss curve."""

    required_capability = MANAGE

    @extend_schema(operation_id="run_retrieve", summary="Get a training run", tags=["models"],
                   parameters=[PROJECT_ID, RUN_ID],
                   responses={200: s.TrainingRunDetailSerializer, **errors(401, 403, 404)})
    def get(self, request, project_id, run_id):
        return Response(s.TrainingRunDetailSerializer(self.get_run(run_id)).data)


class RunCancelView(RunMixin, ApiView):
    """Cancel a run: a queued run at once (status `cancelled`), a running one at its next training step
    (`cancel_requested` is set; the status follows). A run that is already over is a 409."""

    required_capability = MANAGE

    @extend_schema(operation_id="run_cancel", summary="Cancel a training run", tags=["models"],
                   parameters=[PROJECT_ID, RUN_ID], request=None,
                   responses={200: s.TrainingRunDetailSerializer, **errors(401, 403, 404, 409)})
    def post(self, request, project_id, run_id):
        run = self.get_run(run_id)
        if training.cancel_run(run, request.user) == "finished":
            run.refresh_from_db(fields=["status"])
            raise ApiError(409, f"Run {run.pk} is already over ({run.status}).")
        return Response(s.TrainingRunDetailSerializer(self.get_run(run_id)).data)


class VersionMixin:
    def get_version(self, version_id, *, detail=True) -> ModelVersion:
        qs = model_versions(self.project)
        if detail:
            qs = qs.defer(None)
        version = qs.filter(pk=version_id).first()
        if version is None:
            raise ApiError(404, "No such model version in this project.")
        return version


class VersionListView(ApiView):
    """Model versions, newest first, with their held-out metrics and those of the version promoted when
    they were trained (`baseline_metrics`)."""

    required_capability = MANAGE

    @extend_schema(operation_id="versions_list", summary="List model versions", tags=["models"],
                   parameters=[PROJECT_ID],
                   responses={200: s.ModelVersionSerializer(many=True), **errors(401, 403, 404)})
    def get(self, request, project_id):
        qs = model_versions(self.project).order_by("-created_at", "-pk")
        return self.paginated(qs, s.ModelVersionSerializer)


class VersionDetailView(VersionMixin, ApiView):
    """One model version, with the [item_id, step] pairs it was trained on."""

    required_capability = MANAGE

    @extend_schema(operation_id="version_retrieve", summary="Get a model version", tags=["models"],
                   parameters=[PROJECT_ID, VERSION_ID],
                   responses={200: s.ModelVersionDetailSerializer, **errors(401, 403, 404)})
    def get(self, request, project_id, version_id):
        return Response(s.ModelVersionDetailSerializer(self.get_version(version_id)).data)


class VersionPromoteView(VersionMixin, ApiView):
    """Make a version the project's model (or restore an earlier one); the open items are re-scored.
    Its files are checked against their hash first: a version whose files are missing or changed is a 409."""

    required_capability = MANAGE

    @extend_schema(operation_id="version_promote", summary="Promote a model version", tags=["models"],
                   parameters=[PROJECT_ID, VERSION_ID], request=None,
                   responses={200: OpenApiResponse(s.ModelVersionSerializer,
                                                   description="Promoted now, or it already was the project's model."),
                              **errors(401, 403, 404, 409)})
    def post(self, request, project_id, version_id):
        version = self.get_version(version_id, detail=False)
        try:
            training.promote(version, request.user)
        except training.PromotionError as exc:
            raise ApiError(409, str(exc)) from None
        return Response(s.ModelVersionSerializer(self.get_version(version_id, detail=False)).data)


# --- audit and kinds ------------------------------------------------------------


class AuditListView(ApiView):
    """The project's audit log, newest first."""

    required_capability = MANAGE

    @extend_schema(operation_id="audit_list", summary="The audit log", tags=["projects"],
                   parameters=[PROJECT_ID, OpenApiParameter("verb", OpenApiTypes.STR,
                                                            description="Only events with this verb.")],
                   responses={200: s.AuditEventSerializer(many=True), **errors(401, 403, 404)})
    def get(self, request, project_id):
        qs = AuditEvent.objects.filter(project=self.project).select_related("actor").order_by("-at", "-pk")
        verb = request.query_params.get("verb")
        if verb:
            qs = qs.filter(verb=verb)
        return self.paginated(qs, s.AuditEventSerializer)


def kind_info(kind) -> dict:
    return {
        "name": kind.name,
        "label": kind.label,
        "import_formats": dict(kind.import_formats),
        "export_formats": [
            {"name": f.name, "label": f.label, "extension": f.extension, "content_type": f.content_type,
             "description": f.description}
            for f in kind.export_formats.values()
        ],
        "payload_schema": kind.payload_schema.model_json_schema(),
        "feedback_schema": kind.feedback_schema.model_json_schema(),
        "prediction_schema": kind.prediction_schema.model_json_schema(),
    }


class KindListView(ApiView):
    """The registered kinds with the JSON Schemas of their payloads, answers and predictions."""

    required_capability = None
    pagination_class = None

    @extend_schema(operation_id="kinds_list", summary="List kinds and their schemas",
                   tags=["kinds"], responses={200: s.KindSerializer(many=True),
                                                                          **errors(401)})
    def get(self, request):
        return Response([kind_info(k) for k in all_kinds()])


class KindDetailView(ApiView):
    """One kind with its JSON Schemas."""

    required_capability = None
    pagination_class = None

    @extend_schema(operation_id="kind_retrieve", summary="Get a kind and its schemas",
                   tags=["kinds"], responses={200: s.KindSerializer,
                                                                             **errors(401, 404)})
    def get(self, request, name):
        try:
            kind = get_kind(name)
        except KindError:
            raise ApiError(404, f"No kind called {name!r}.") from None
        return Response(kind_info(kind))

