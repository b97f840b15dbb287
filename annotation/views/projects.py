"""Pages: project list, dashboard, settings, members, items, audit log."""

from django import forms
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import transaction
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path
from django.views.decorators.http import require_POST

from ..answers import latest_prediction, reresolve_project
from ..kinds import kind_choices
from ..models import AuditEvent, Item, Membership, Project, Role
from ..permissions import MANAGE, REVIEW, VIEW, project_view, visible_projects
from ..stats import item_agreement, project_stats


def page(request, template, project=None, **context):
    """Render with the project context every project page shares (nav, role, capabilities)."""
    if project is not None:
        context.update(project=project, project_role=request.project_role, project_caps=request.project_caps)
    return render(request, template, context)


@login_required
def project_list(request):
    projects = visible_projects(request.user).order_by("name")
    roles = dict(Membership.objects.filter(user=request.user).values_list("project_id", "role"))
    rows = [{"project": p, "role": "site admin" if request.user.is_superuser else roles.get(p.pk)} for p in projects]
    return render(request, "annotation/project_list.html", {"rows": rows})


class ProjectForm(forms.ModelForm):
    class Meta:
        model = Project
        fields = ["name", "kind", "description", "guidelines", "answers_per_item", "lease_minutes",
                  "retrain_every", "llm_label_weight", "heldout_percent", "auto_promote", "promote_margin",
                  "base_model"]
        widgets = {"kind": forms.Select(choices=kind_choices())}

    def clean_answers_per_item(self):
        n = self.cleaned_data["answers_per_item"]
        if not 1 <= n <= 20:
            raise forms.ValidationError("Between 1 and 20 answers per item.")
        return n

    def clean_lease_minutes(self):
        n = self.cleaned_data["lease_minutes"]
        if not 1 <= n <= 24 * 60:
            raise forms.ValidationError("Between 1 minute and 24 hours.")
        return n

    def clean_retrain_every(self):
        n = self.cleaned_data["retrain_every"]
        if not 0 <= n <= 1_000_000:
            raise forms.ValidationError("Between 0 (only by hand) and 1,000,000 labels.")
        return n

    def clean_llm_label_weight(self):
        w = self.cleaned_data["llm_label_weight"]
        if not 0.0 <= w <= 1.0:
            raise forms.ValidationError("Between 0 (LLM labels unused) and 1 (as much as a person's).")
        return w

    def clean_heldout_percent(self):
        n = self.cleaned_data["heldout_percent"]
        if not 0 <= n <= 90:
            raise forms.ValidationError("Between 0 and 90 percent.")
        return n

    def clean_promote_margin(self):
        m = self.cleaned_data["promote_margin"]
        if not -1.0 <= m <= 1.0:
            raise forms.ValidationError("Between -1 and 1 (F1 points as a fraction).")
        return m

    def clean_base_model(self):
        """A local model folder (never a hub name: nothing is downloaded). It may live only on the
        GPU workers' machines; when it exists here it must be a model folder."""
        import os

        value = self.cleaned_data["base_model"].strip()
        if not value:
            return ""
        if not os.path.isabs(value):
            raise forms.ValidationError("An absolute path to a local model folder (models are never downloaded).")
        if os.path.exists(value) and not os.path.isfile(os.path.join(value, "config.json")):
            raise forms.ValidationError("That folder holds no config.json: not a Hugging Face model folder.")
        return value


@login_required
def project_create(request):
    if not request.user.is_staff:
        raise PermissionDenied("Only site staff create projects.")
    form = ProjectForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            project = form.save(commit=False)
            project.created_by = request.user
            project.save()
            Membership.objects.create(project=project, user=request.user, role=Role.MANAGER)
            AuditEvent.record(actor=request.user, verb="project.created", obj=project, project=project,
                              after={"name": project.name, "kind": project.kind})
        return redirect("project-dashboard", project.pk)
    return render(request, "annotation/project_form.html", {"form": form, "creating": True})


@project_view(VIEW)
def dashboard(request, project):
    return page(request, "annotation/dashboard.html", project, stats=project_stats(project))


@project_view(VIEW)
def dashboard_stats(request, project):
    """The live part of the dashboard, for polling and for the websocket push."""
    return page(request, "annotation/_dashboard_stats.html", project, stats=project_stats(project))


@project_view(MANAGE)
def project_settings(request, project):
    form = ProjectForm(request.POST or None, instance=project)
    form.fields["kind"].disabled = True  # a project's kind is fixed once created
    if request.method == "POST" and form.is_valid():
        before = {f: getattr(Project.objects.get(pk=project.pk), f) for f in form.changed_data}
        with transaction.atomic():
            if "guidelines" in form.changed_data:
                project.guidelines_version += 1
            form.save()
            if "answers_per_item" in form.changed_data:
                reresolve_project(project)
            if form.changed_data:
                AuditEvent.record(actor=request.user, verb="project.settings", obj=project, project=project,
                                  before=before, after={f: getattr(project, f) for f in form.changed_data})
        messages.success(request, "Settings saved.")
        return redirect("project-settings", project.pk)
    return page(request, "annotation/project_form.html", project, form=form, creating=False)


class MemberForm(forms.Form):
    username = forms.CharField(max_length=150)
    role = forms.ChoiceField(choices=Role.choices)

    def clean_username(self):
        name = self.cleaned_data["username"].strip()
        try:
            return get_user_model().objects.get(username=name)
        except get_user_model().DoesNotExist:
            raise forms.ValidationError(f"No user called {name!r}.") from None


def _lock_managers(project):
    """The project's manager memberships, locked until the transaction ends (no race to remove the last one)."""
    return Membership.objects.select_for_update().filter(project=project, role=Role.MANAGER)


@project_view(MANAGE)
def members(request, project):
    form = MemberForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user, role = form.cleaned_data["username"], form.cleaned_data["role"]
        with transaction.atomic():
            managers = list(_lock_managers(project))
            existing = Membership.objects.filter(project=project, user=user).first()
            if existing and existing.role == Role.MANAGER and role != Role.MANAGER and len(managers) == 1:
                messages.error(request, "A project needs at least one manager.")
                return redirect("project-members", project.pk)
            before = {"user": user.username, "role": existing.role} if existing else None
            m, _ = Membership.objects.update_or_create(project=project, user=user, defaults={"role": role})
            AuditEvent.record(actor=request.user, verb="member.role", obj=m, project=project, before=before,
                              after={"user": user.username, "role": role})
        messages.success(request, f"{user.username} is now {role}.")
        return redirect("project-members", project.pk)
    rows = Membership.objects.filter(project=project).select_related("user").order_by("role", "user__username")
    return page(request, "annotation/members.html", project, form=form, memberships=rows, roles=Role.choices)


@require_POST
@project_view(MANAGE)
def member_remove(request, project, membership_id):
    with transaction.atomic():
        managers = list(_lock_managers(project))
        m = get_object_or_404(Membership, pk=membership_id, project=project)
        if m.role == Role.MANAGER and len(managers) == 1:
            messages.error(request, "A project needs at least one manager.")
            return redirect("project-members", project.pk)
        AuditEvent.record(actor=request.user, verb="member.removed", obj=m, project=project,
                          before={"user": m.user.username, "role": m.role})
        m.delete()
    messages.success(request, f"{m.user.username} removed.")
    return redirect("project-members", project.pk)


ITEM_STATES = [s for s in Item.State.values if s != Item.State.STAGED]


@project_view(VIEW)
def item_list(request, project):
    qs = Item.objects.live().filter(project=project)
    state = request.GET.get("state", "")
    if state in ITEM_STATES:
        qs = qs.filter(state=state)
    else:
        state = ""
    qs = qs.order_by("seq").only("pk", "external_id", "seq", "state", "priority", "answer_count", "step_count")
    pager = Paginator(qs, 50)
    page_obj = pager.get_page(request.GET.get("page"))
    return page(request, "annotation/item_list.html", project, page_obj=page_obj, state=state, states=ITEM_STATES)


@project_view(VIEW)
def item_detail(request, project, item_id):
    item = get_object_or_404(Item.objects.live().select_related("payload"), pk=item_id, project=project)
    can_review = REVIEW in request.project_caps
    answers = item.answers.select_related("user").order_by("submitted_at") if can_review else []
    final = getattr(item, "final", None) if hasattr(item, "final") else None
    return page(
        request,
        "annotation/item_detail.html",
        project,
        item=item,
        payload=item.payload.data,
        prediction=latest_prediction(item),
        answers=answers,
        final=final,
        agreement=item_agreement(item) if can_review and project.answers_per_item > 1 else None,
    )


@project_view(MANAGE)
def audit_log(request, project):
    qs = AuditEvent.objects.filter(project=project).select_related("actor")
    verb = request.GET.get("verb", "").replace("\x00", "")  # PostgreSQL text cannot hold NUL
    if verb:
        qs = qs.filter(verb=verb)
    page_obj = Paginator(qs, 50).get_page(request.GET.get("page"))
    verbs = AuditEvent.objects.filter(project=project).values_list("verb", flat=True).distinct().order_by("verb")
    return page(request, "annotation/audit.html", project, page_obj=page_obj, verb=verb, verbs=verbs)


urlpatterns = [
    path("", project_list, name="project-list"),
    path("projects/new/", project_create, name="project-create"),
    path("projects/<int:project_id>/", dashboard, name="project-dashboard"),
    path("projects/<int:project_id>/stats/", dashboard_stats, name="project-stats"),
    path("projects/<int:project_id>/settings/", project_settings, name="project-settings"),
    path("projects/<int:project_id>/members/", members, name="project-members"),
    path("projects/<int:project_id>/members/<int:membership_id>/remove/", member_remove, name="member-remove"),
    path("projects/<int:project_id>/items/", item_list, name="item-list"),
    path("projects/<int:project_id>/items/<int:item_id>/", item_detail, name="item-detail"),
    path("projects/<int:project_id>/audit/", audit_log, name="project-audit"),
]
