"""Pages: exports (choose a format and filters, download a streamed file)."""

from django.urls import path

from ..exporting import ExportFilters, available_formats, export_response
from ..models import AuditEvent, Final, Item, Membership
from ..permissions import MANAGE, project_view
from .projects import page


def _export_page(request, project, *, error=None, status=200):
    formats = available_formats(project)
    params = request.GET
    selected = params.get("format") if params.get("format") in formats else "jsonl"
    members = (Membership.objects.filter(project=project).select_related("user")
               .order_by("user__username").values_list("user__username", flat=True))
    live = Item.objects.live().filter(project=project)
    response = page(
        request,
        "annotation/export.html",
        project,
        formats=formats,
        selected=selected,
        params=params,
        usernames=list(members),
        item_count=live.count(),
        final_count=Final.objects.filter(item__in=live).count(),
        error=error,
    )
    response.status_code = status
    return response


@project_view(MANAGE)
def export_page(request, project):
    return _export_page(request, project)


@project_view(MANAGE)
def export_download(request, project):
    """The export file, streamed. Bad parameters answer 400 with the reason."""
    fmt = request.GET.get("format", "jsonl")
    formats = available_formats(project)
    if fmt not in formats:
        return _export_page(request, project, status=400,
                            error=f"Unknown export format {fmt!r}; choose one of: {', '.join(formats)}.")
    try:
        filters = ExportFilters.from_params(request.GET)
    except ValueError as exc:
        return _export_page(request, project, error=str(exc), status=400)
    AuditEvent.record(actor=request.user, verb="export.downloaded", obj=project, project=project,
                      after={"format": fmt, **filters.as_params()})
    return export_response(project, fmt, filters, request=request)


urlpatterns = [
    path("projects/<int:project_id>/export/", export_page, name="export-page"),
    path("projects/<int:project_id>/export/download/", export_download, name="export-download"),
]
