"""Pages: imports (upload a file, follow its progress, read its errors)."""

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from django.shortcuts import get_object_or_404, redirect
from django.urls import path
from django.views.decorators.csrf import csrf_exempt, csrf_protect

from ..importing import FORMATS, ImportRejected, create_import_job, fail_stale_imports, human_bytes
from ..models import ImportJob
from ..permissions import MANAGE, project_view
from .projects import page

JOBS_SHOWN = 50


class ImportForm(forms.Form):
    format = forms.ChoiceField(choices=list(FORMATS.items()), initial="auto", required=False)
    file = forms.FileField()


class ImportSizeLimit(FileUploadHandler):
    """Stops reading an upload as soon as it passes IMPORT_MAX_BYTES, before it fills the disk."""

    def __init__(self, request=None):
        super().__init__(request)
        self.limit = settings.IMPORT_MAX_BYTES
        self.content_length = None

    def _stop(self):
        self.request.import_upload_too_big = True
        raise StopUpload(connection_reset=False)

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        self.content_length = content_length
        return None

    def new_file(self, *args, **kwargs):
        super().new_file(*args, **kwargs)
        if (self.content_length or 0) > self.limit + 1024 * 1024:
            self._stop()

    def receive_data_chunk(self, raw_data, start):
        if start + len(raw_data) > self.limit:
            self._stop()
        return raw_data

    def file_complete(self, file_size):
        return None


def _percent(job: ImportJob) -> int:
    return int(round(job.progress * 100))


def _too_big_message() -> str:
    return (
        f"The file is larger than the import limit of {human_bytes(settings.IMPORT_MAX_BYTES)}. "
        "Compress it (gzip, bzip2 or xz) or split it into several files."
    )


@csrf_exempt
def import_list(request, project_id):
    """GET: the upload form and the project's imports. POST: upload a file (managers)."""
    if request.method == "POST":
        # before anything reads the body: the size limit must see the upload as it streams in
        request.upload_handlers.insert(0, ImportSizeLimit(request))
    return _import_list(request, project_id)


@csrf_protect
@project_view(MANAGE)
def _import_list(request, project):
    fail_stale_imports()
    form = ImportForm(request.POST or None, request.FILES or None)
    status = 200
    if request.method == "POST":
        if getattr(request, "import_upload_too_big", False):
            form.is_valid()
            form.errors["file"] = form.error_class([_too_big_message()])
            status = 400
        elif form.is_valid():
            upload = form.cleaned_data["file"]
            try:
                job = create_import_job(project, request.user, upload, upload.name,
                                        form.cleaned_data["format"] or "auto")
            except ImportRejected as exc:
                form.add_error("file", exc.message)
                status = 400
            else:
                messages.success(request, f"{job.filename} is queued for import.")
                return redirect("import-detail", project.pk, job.pk)
        else:
            status = 400
    jobs = list(ImportJob.objects.filter(project=project).select_related("created_by")[:JOBS_SHOWN])
    for job in jobs:
        job.percent = _percent(job)
    response = page(
        request, "annotation/import_list.html", project, form=form, jobs=jobs,
        max_size=human_bytes(settings.IMPORT_MAX_BYTES), kind_formats=project.kind_spec.import_formats,
    )
    response.status_code = status
    return response


import_list.required_capability = MANAGE


def _job_context(request, project, job_id):
    fail_stale_imports()
    job = get_object_or_404(ImportJob.objects.select_related("created_by"), pk=job_id, project=project)
    return {"job": job, "percent": _percent(job), "active": job.status in (ImportJob.Status.QUEUED,
                                                                          ImportJob.Status.RUNNING)}


@project_view(MANAGE)
def import_detail(request, project, job_id):
    return page(request, "annotation/import_detail.html", project, **_job_context(request, project, job_id))


@project_view(MANAGE)
def import_progress(request, project, job_id):
    """The live part of the detail page; polled with htmx while the job is queued or running."""
    return page(request, "annotation/import_progress.html", project, **_job_context(request, project, job_id))


urlpatterns = [
    path("projects/<int:project_id>/imports/", import_list, name="import-list"),
    path("projects/<int:project_id>/imports/<int:job_id>/", import_detail, name="import-detail"),
    path("projects/<int:project_id>/imports/<int:job_id>/progress/", import_progress, name="import-progress"),
]
