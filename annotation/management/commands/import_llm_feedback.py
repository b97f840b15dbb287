"""Attach an LLM's step feedback (the LFM code's feedback records) to a project's trajectories."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from annotation.llm_feedback import UNLISTED, FeedbackError, parse_record, read_records, rollout_key
from annotation.models import Answer, AuditEvent, Item, ItemPayload, Project

MAX_PRINTED_ERRORS = 50


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


@dataclass
class FileResult:
    path: Path
    records: int = 0
    labels: dict[int, dict[int, dict]] = field(default_factory=dict)  # item id -> step -> feedback
    lines: dict[tuple[int, int], int] = field(default_factory=dict)  # (item, step) -> record line
    errors: list[str] = field(default_factory=list)
    error_count: int = 0

    def error(self, line: int | None, where: str, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_PRINTED_ERRORS:
            self.errors.append(f"{self.path.name}: {'line %d' % line if line else 'file'}: {where}: {message}")


class Command(BaseCommand):
    help = (
        "Read LLM feedback records ({prompt, fname, response, snapshot: {render, render_start, render_end}}, "
        "one JSON per line or per file, optionally gzip/bzip2/xz) and write each step's weak label into "
        "step['feedback'] of the matching item's payload. Items match when their external_id equals the "
        "record's fname stem (see --match). All or nothing per file; human answers are never touched."
    )

    def add_arguments(self, parser):
        parser.add_argument("project_id", type=int)
        parser.add_argument("paths", nargs="+", help="files, or folders (every file in them, sorted)")
        parser.add_argument("--source", default="llm", help="the feedback's source, e.g. gpt-4 (default llm)")
        parser.add_argument(
            "--match", default="stem", choices=["stem", "name", "path"],
            help="what of the record's fname is the item's external_id: the file stem without .json(.bz2) "
            "(default), the file name, or the whole path",
        )
        parser.add_argument(
            "--pattern", help="a regular expression searched in fname; its first group (or the whole match) "
            "is the external_id (overrides --match)",
        )
        parser.add_argument(
            "--unlisted", default="auto", choices=UNLISTED,
            help="steps the LLM did not list: auto (not productive only for the per-step yes/no prompt), "
            "negative (always not productive, as the LFM code's build_reward_data), none (never labelled)",
        )
        parser.add_argument(
            "--step-offset", type=int, default=1,
            help="rollout step N is the payload's step N - offset (default 1: the rollout import drops traj[0])",
        )
        parser.add_argument("--no-check-actions", action="store_true",
                            help="do not check that the render's actions are the item's actions")
        parser.add_argument("--keep-existing", action="store_true",
                            help="leave steps that already carry feedback as they are")
        parser.add_argument("--dry-run", action="store_true", help="check and count, write nothing")

    def handle(self, *args, project_id, paths, source, match, pattern, unlisted, step_offset,
               no_check_actions, keep_existing, dry_run, **options):
        try:
            project = Project.objects.get(pk=project_id)
        except Project.DoesNotExist:
            raise CommandError(f"No project with id {project_id}.") from None
        if project.kind != "lfm_trajectory":
            raise CommandError(
                f"Project {project_id} is of kind {project.kind!r}; LLM step feedback needs lfm_trajectory."
            )
        if not source.strip() or len(source) > 100:
            raise CommandError("--source must be 1 to 100 characters.")
        regex = None
        if pattern:
            try:
                regex = re.compile(pattern)
            except re.error as exc:
                raise CommandError(f"--pattern is not a valid regular expression: {exc}") from None
        files = []
        for p in map(Path, paths):
            if p.is_dir():
                files.extend(sorted(f for f in p.iterdir() if f.is_file()))
            elif p.is_file():
                files.append(p)
            else:
                raise CommandError(f"No such file or folder: {p}")
        if not files:
            raise CommandError("No files to read.")

        def key_of(fname: str) -> str | None:
            if regex is None:
                return rollout_key(fname, match)
            m = regex.search(fname)
            if m is None:
                return None
            return m.group(1) if m.groups() else m.group(0)

        started = time.monotonic()
        failed = 0
        totals = {"records": 0, "steps": 0, "productive": 0, "items": 0, "replaced": 0, "kept": 0}
        for path in files:
            result = self._read(path, project, key_of, unlisted, step_offset, not no_check_actions, source)
            if result.error_count:
                failed += 1
                for e in result.errors:
                    self.stderr.write(e)
                if result.error_count > len(result.errors):
                    self.stderr.write(f"{path.name}: ... and {result.error_count - len(result.errors)} more")
                self.stderr.write(f"{path}: {result.error_count} error(s); nothing from this file was written.")
                continue
            counts = self._write(project, result, keep_existing, dry_run, source)
            totals["records"] += result.records
            for k in ("steps", "productive", "items", "replaced", "kept"):
                totals[k] += counts[k]
            self.stdout.write(
                f"{path}: {result.records} records, {counts['steps']} step labels "
                f"({counts['productive']} productive) on {counts['items']} items"
                + (f", {counts['replaced']} replaced earlier feedback" if counts["replaced"] else "")
                + (f", {counts['kept']} kept (--keep-existing)" if counts["kept"] else "")
                + (f"; {counts['answered']} of these items already have answers (left as they are)"
                   if counts["answered"] else "")
                + (" [dry run: nothing written]" if dry_run else "")
            )
        seconds = time.monotonic() - started
        self.stdout.write(
            f"{len(files) - failed} of {len(files)} file(s) imported: {totals['records']} records, "
            f"{totals['steps']} step labels ({totals['productive']} productive) on {totals['items']} items "
            f"in {seconds:.1f} s."
        )
        if failed:
            raise CommandError(f"{failed} file(s) had errors and were not imported.")

    # --- reading and checking one file (no writes) ---------------------------------

    def _read(self, path, project, key_of, unlisted, step_offset, check_actions, source) -> FileResult:
        result = FileResult(path)
        parsed = []
        try:
            for line, obj in read_records(path):
                result.records += 1
                if isinstance(obj, FeedbackError):
                    result.error(line, obj.field, obj.message)
                    continue
                try:
                    record = parse_record(obj, unlisted=unlisted, step_offset=step_offset)
                except FeedbackError as exc:
                    result.error(line, exc.field, exc.message)
                    continue
                key = key_of(record.fname)
                if key is None:
                    result.error(line, "fname", f"{record.fname!r} does not match --pattern")
                    continue
                parsed.append((line, key, record))
        except (OSError, EOFError, UnicodeDecodeError, ValueError) as exc:
            result.error(None, "(file)", f"cannot read it: {exc}")
            return result
        if not result.records:
            result.error(None, "(file)", "no records")
            return result

        keys = {key for _, key, _ in parsed}
        items: dict[str, list[int]] = {}
        live = Item.objects.live().filter(project=project, external_id__in=keys)
        for pk, ext in live.values_list("pk", "external_id"):
            items.setdefault(ext, []).append(pk)
        wanted = [pk for pks in items.values() for pk in pks]
        payloads = {p.item_id: p.data for p in ItemPayload.objects.filter(item_id__in=wanted)}
        for line, key, record in parsed:
            pks = items.get(key, [])
            if not pks:
                result.error(line, "fname", f"no item of project {project.pk} has external_id {key!r}")
                continue
            if len(pks) > 1:
                result.error(line, "fname", f"{len(pks)} items of project {project.pk} have external_id {key!r}")
                continue
            pk = pks[0]
            steps = payloads[pk]["steps"]
            beyond = [i for i in record.shown if i >= len(steps)]
            if beyond:
                result.error(line, "snapshot", f"shows step {beyond[0] + step_offset}, but item {key!r} has only "
                             f"{len(steps)} steps (rollout steps {step_offset}..{len(steps) - 1 + step_offset})")
                continue
            if check_actions:
                bad = [i for i, a in record.actions.items() if _norm(a) != _norm(steps[i]["action"])]
                if bad:
                    i = bad[0]
                    result.error(line, "snapshot", f"step {i + step_offset} shows the action {record.actions[i]!r}, "
                                 f"but item {key!r} has {steps[i]['action']!r} there (numbering off? "
                                 "see --step-offset, or --no-check-actions)")
                    continue
            item_labels = result.labels.setdefault(pk, {})
            for lab in record.labels:
                earlier = item_labels.get(lab.index)
                if earlier is not None and earlier["productive"] != lab.productive:
                    result.error(line, "response", f"step {lab.step} of {key!r} is labelled "
                                 f"{'productive' if lab.productive else 'not productive'}, but line "
                                 f"{result.lines[(pk, lab.index)]} said the opposite")
                    continue
                if earlier is not None:
                    reason = " ".join(x for x in (earlier["reason"], lab.reason) if x)
                else:
                    reason = lab.reason
                    result.lines[(pk, lab.index)] = line
                item_labels[lab.index] = {"productive": lab.productive, "reason": reason, "source": source}
        return result

    # --- writing one file, in one transaction ---------------------------------------

    def _write(self, project, result: FileResult, keep_existing: bool, dry_run: bool, source: str) -> dict:
        counts = {"steps": 0, "productive": 0, "items": 0, "replaced": 0, "kept": 0, "answered": 0}
        with transaction.atomic():
            rows = ItemPayload.objects.select_for_update().filter(item_id__in=list(result.labels)).order_by("item_id")
            locked = {p.item_id: p for p in rows}
            for pk, labels in result.labels.items():
                if not labels:
                    continue
                payload = locked[pk]
                steps = payload.data["steps"]
                changed = False
                for index, fb in sorted(labels.items()):
                    if steps[index].get("feedback") is not None:
                        if keep_existing:
                            counts["kept"] += 1
                            continue
                        counts["replaced"] += 1
                    steps[index]["feedback"] = fb
                    counts["steps"] += 1
                    counts["productive"] += fb["productive"]
                    changed = True
                if changed:
                    counts["items"] += 1
                    if not dry_run:
                        payload.save(update_fields=["data"])
            counts["answered"] = Answer.objects.filter(item_id__in=[pk for pk, lab in result.labels.items() if lab]) \
                .values("item_id").distinct().count()
            if not dry_run and counts["items"]:
                AuditEvent.record(
                    actor=None, verb="llm_feedback.imported", obj=project, project=project,
                    after={"file": str(result.path), "records": result.records, "steps": counts["steps"],
                           "productive": counts["productive"], "items": counts["items"],
                           "replaced": counts["replaced"], "source": source},
                )
            if dry_run:
                transaction.set_rollback(True)
        return counts
