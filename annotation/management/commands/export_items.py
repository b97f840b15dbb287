"""Export a project's records to a file or to standard output, streamed."""

from django.core.management.base import BaseCommand, CommandError

from annotation.exporting import ExportFilters, available_formats, stream_export
from annotation.models import Project


class Command(BaseCommand):
    help = "Export a project's items, answers and final labels (streamed: constant memory for any project size)."

    def add_arguments(self, parser):
        parser.add_argument("project_id", type=int)
        parser.add_argument("--format", default="jsonl", help="jsonl, or one of the project kind's formats")
        parser.add_argument("--final-only", action="store_true", help="only items with a final label")
        parser.add_argument("--since", help="YYYY-MM-DD: answers submitted / finals decided on or after this day")
        parser.add_argument("--until", help="YYYY-MM-DD: answers submitted / finals decided on or before this day")
        parser.add_argument("--annotator", help="username: only items this user answered, and only their answers")
        parser.add_argument("-o", "--output", help="file to write (default: standard output)")

    def handle(self, *args, project_id, format, output=None, **options):
        try:
            project = Project.objects.get(pk=project_id)
        except Project.DoesNotExist:
            raise CommandError(f"No project with id {project_id}.") from None
        formats = available_formats(project)
        if format not in formats:
            raise CommandError(f"Unknown format {format!r}; this project offers: {', '.join(formats)}.")
        try:
            filters = ExportFilters.from_params({
                "final_only": "1" if options.get("final_only") else "",
                "since": options.get("since") or "",
                "until": options.get("until") or "",
                "annotator": options.get("annotator") or "",
            })
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        chunks = stream_export(project, format, filters)
        written = 0
        if output:
            with open(output, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                    written += len(chunk)
            self.stderr.write(f"Wrote {written} bytes to {output}.")
            return
        out = getattr(self.stdout, "_out", self.stdout)
        binary = getattr(out, "buffer", None)
        for chunk in chunks:
            if binary is not None:
                binary.write(chunk)
            else:
                out.write(chunk.decode())
        if binary is not None:
            binary.flush()
