"""Import a file of items into a project, here and now (no worker needed)."""

import time

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from annotation.importing import FORMATS, ImportRejected, human_bytes, import_path
from annotation.models import ImportJob, Project


class Command(BaseCommand):
    help = (
        "Import a JSONL file (or one JSON document; gzip, bzip2 and xz are read as they are) into a project. "
        "All or nothing: if any line is invalid nothing is imported and the errors are printed."
    )

    def add_arguments(self, parser):
        parser.add_argument("project_id", type=int)
        parser.add_argument("path")
        parser.add_argument("--format", default="auto", help=f"one of: {', '.join(FORMATS)} (default auto)")
        parser.add_argument("--user", help="username recorded as the importer")

    def handle(self, *args, project_id, path, format, user=None, **options):
        try:
            project = Project.objects.get(pk=project_id)
        except Project.DoesNotExist:
            raise CommandError(f"No project with id {project_id}.") from None
        importer = None
        if user:
            importer = get_user_model().objects.filter(username=user).first()
            if importer is None:
                raise CommandError(f"No user called {user!r}.")
        verbosity = options.get("verbosity", 1)
        started = time.monotonic()
        last = [0.0]

        def progress(job):
            now = time.monotonic()
            if verbosity < 1 or now - last[0] < 1.0:
                return
            last[0] = now
            pct = 100.0 * job.bytes_read / job.size_bytes if job.size_bytes else 0.0
            self.stderr.write(
                f"{pct:5.1f}%  {job.lines_read} lines  {job.items_imported} items  "
                f"{job.steps_imported} steps  {job.error_count} errors"
            )

        try:
            job = import_path(project, importer, path, format, on_progress=progress)
        except ImportRejected as exc:
            raise CommandError(exc.message) from None
        seconds = time.monotonic() - started
        if job.status != ImportJob.Status.SUCCEEDED:
            for e in job.errors:
                where = f"line {e['line']}" if e.get("line") else "file"
                self.stderr.write(f"{where}: {e['field']}: {e['message']}")
            if job.error_count > len(job.errors):
                self.stderr.write(f"... and {job.error_count - len(job.errors)} more")
            raise CommandError(
                f"Import {job.pk} failed with {job.error_count} error(s) after {job.lines_read} lines; "
                "nothing was imported."
            )
        rate = job.items_imported / seconds if seconds > 0 else 0.0
        self.stdout.write(
            f"Import {job.pk}: {job.items_imported} items, {job.steps_imported} steps from {job.filename} "
            f"({human_bytes(job.size_bytes)}) in {seconds:.1f} s ({rate:.0f} items/s)."
        )
