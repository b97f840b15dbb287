"""Play a reviewer through a project's queue, so the model loop can be watched end to end.

    manage.py simulate_reviewer <project_id> --labels 200 --user sim [--noise 0.1] [--rule] [--delay 0.5]

Takes items from the queue and submits an answer to each through the real answer path
(annotation.answers.submit), until it has given `--labels` step labels or the queue is empty. Each
step's label is the LLM's imported label, flipped with probability `--noise` (seeded), or with
`--rule` (and on steps without LLM feedback) a fixed rule: an action is productive unless it is
looking around, checking the inventory, examining, or got "Nothing happens." back. The user is
created (without a usable password) and made an annotator of the project when needed.
"""

import random
import time

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from annotation import answers, queue
from annotation.kinds.lfm import shown_labels
from annotation.models import Membership, Project, Role, TrainingRun

WASTE_PREFIXES = ("look", "inventory", "examine")


def rule_label(step: dict) -> bool:
    action = step.get("action", "").strip().lower()
    result = (step.get("result") or "").strip().lower()
    return not (action.startswith(WASTE_PREFIXES) or result == "nothing happens.")


class Command(BaseCommand):
    help = "Answer items from the queue as a simulated reviewer (through the real answer path)."

    def add_arguments(self, parser):
        parser.add_argument("project_id", type=int)
        parser.add_argument("--labels", type=int, default=200, help="stop after this many step labels")
        parser.add_argument("--user", default="simulated-reviewer")
        parser.add_argument("--noise", type=float, default=0.1, help="chance of flipping the LLM's label")
        parser.add_argument("--rule", action="store_true", help="decide every step by the fixed rule")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait after each item")

    def handle(self, *args, project_id, labels, user, noise, rule, seed, delay, **options):
        try:
            project = Project.objects.get(pk=project_id)
        except Project.DoesNotExist:
            raise CommandError(f"no project {project_id}") from None
        if project.kind != "lfm_trajectory":
            raise CommandError("simulate_reviewer plays lfm_trajectory projects only")
        if not 0.0 <= noise <= 1.0:
            raise CommandError("--noise must be between 0 and 1")
        User = get_user_model()
        reviewer, created = User.objects.get_or_create(username=user)
        if created:
            reviewer.set_unusable_password()
            reviewer.save(update_fields=["password"])
        Membership.objects.get_or_create(project=project, user=reviewer, defaults={"role": Role.ANNOTATOR})
        rng = random.Random(seed)
        runs_before = set(TrainingRun.objects.filter(project=project).values_list("pk", flat=True))
        given = items_done = flipped = 0
        while given < labels:
            item = queue.next_item(project, reviewer)
            if item is None:
                self.stdout.write("the queue is empty for this reviewer")
                break
            payload = item.payload.data
            prediction = answers.latest_prediction(item)
            shown = shown_labels(payload, prediction.data if prediction else None)
            steps = []
            for i, step in enumerate(payload["steps"]):
                fb = step.get("feedback")
                if rule or fb is None:
                    label = rule_label(step)
                else:
                    label = bool(fb["productive"])
                    if rng.random() < noise:
                        label = not label
                        flipped += 1
                if shown[i] is None:
                    steps.append({"step": i, "verdict": None, "label": label})
                else:
                    steps.append({"step": i, "verdict": "agree" if label == shown[i] else "disagree"})
            try:
                answers.submit(item, reviewer, {"steps": steps, "notes": ""}, time_spent_ms=1000 * len(steps))
            except answers.AnswerError as exc:
                self.stderr.write(f"item {item.pk}: {exc.message}; skipping it")
                queue.skip(item, reviewer)
                continue
            given += len(steps)
            items_done += 1
            if items_done % 10 == 0:
                self.stdout.write(f"{items_done} items, {given} step labels")
            if delay:
                time.sleep(delay)
        self.stdout.write(f"answered {items_done} items with {given} step labels ({flipped} LLM labels flipped)")
        if project.answers_per_item > 1:
            self.stdout.write(f"note: items need {project.answers_per_item} answers before their labels are final")
        new_runs = TrainingRun.objects.filter(project=project).exclude(pk__in=runs_before).order_by("pk")
        for run in new_runs:
            self.stdout.write(f"training run {run.pk} {run.status}: {run.reason}")
