from django.contrib import admin, messages

from .exporting import ExportFilters, export_response
from .models import Answer, AuditEvent, Final, ImportJob, Item, Membership, Project


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "answers_per_item", "created_at"]
    search_fields = ["name"]
    inlines = [MembershipInline]
    actions = ["export_jsonl"]

    @admin.action(description="Export selected project as JSONL", permissions=["change"])
    def export_jsonl(self, request, queryset):
        """Stream the full-record JSONL of one project."""
        projects = list(queryset[:2])
        if len(projects) != 1:
            self.message_user(request, "Select exactly one project to export.", level=messages.WARNING)
            return None
        project = projects[0]
        AuditEvent.record(actor=request.user, verb="export.downloaded", obj=project, project=project,
                          after={"format": "jsonl", "via": "admin"})
        return export_response(project, "jsonl", ExportFilters(), request=request)


@admin.register(Item)
class ItemAdmin(admin.ModelAdmin):
    list_display = ["pk", "project", "external_id", "state", "answer_count", "priority"]
    list_filter = ["state", "project"]
    search_fields = ["external_id"]
    raw_id_fields = ["import_job"]
    show_full_result_count = False


@admin.register(Answer)
class AnswerAdmin(admin.ModelAdmin):
    list_display = ["pk", "item", "user", "status", "submitted_at", "time_spent_ms"]
    list_filter = ["status"]
    raw_id_fields = ["item", "user", "reviewed_by"]


@admin.register(Final)
class FinalAdmin(admin.ModelAdmin):
    list_display = ["item", "method", "decided_by", "decided_at"]
    raw_id_fields = ["item"]


@admin.register(ImportJob)
class ImportJobAdmin(admin.ModelAdmin):
    list_display = ["pk", "project", "filename", "status", "items_imported", "error_count", "created_at"]
    list_filter = ["status"]


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ["at", "project", "actor", "verb", "object_type", "object_id"]
    list_filter = ["verb"]

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_add_permission(self, request):
        return False
