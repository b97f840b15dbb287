"""Load the demo: a project of household-task trajectories with LLM step feedback, and logins.

Idempotent: running it again keeps the existing demo project and users.
Prints the admin login (and the demo reviewers' logins).
"""

import secrets
from pathlib import Path

import orjson
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from annotation.demo import trajectories
from annotation.importing import import_path
from annotation.models import ImportJob, Membership, Project, Role

DEMO_NAME = "Demo: ALFWorld-style trajectories"
GUIDELINES = """For every step, decide whether the action was productive: did it bring the agent closer to
completing the task? Agree with the LLM's label when it is right (a), disagree when it is wrong (d), and
say unsure (u) when the trajectory does not tell. Edit the reason when the LLM's reason is wrong."""


class Command(BaseCommand):
    help = "Create the demo project, its items and logins (admin, alice, bob)."

    def add_arguments(self, parser):
        parser.add_argument("--items", type=int, default=60)
        parser.add_argument("--password", default=None, help="password for the demo logins (default: random, printed)")

    def handle(self, *args, items, password, **options):
        User = get_user_model()
        password_file = Path(settings.DATA_DIR) / "demo-password.txt"
        if password is None:
            password = password_file.read_text().strip() if password_file.exists() else secrets.token_urlsafe(9)
        password_file.write_text(password)
        password_file.chmod(0o600)

        with transaction.atomic():
            admin, _ = User.objects.get_or_create(username="admin", defaults={"is_staff": True, "is_superuser": True})
            admin.is_staff = admin.is_superuser = True
            admin.set_password(password)
            admin.save()
            people = {}
            for name in ("alice", "bob"):
                u, _ = User.objects.get_or_create(username=name)
                u.set_password(password)
                u.save()
                people[name] = u
            project, created = Project.objects.get_or_create(
                name=DEMO_NAME,
                defaults={"kind": "lfm_trajectory", "answers_per_item": 2, "guidelines": GUIDELINES,
                          "description": "Verify an LLM's step-by-step feedback on household-task trajectories.",
                          "created_by": admin},
            )
            for user, role in ((admin, Role.MANAGER), (people["alice"], Role.ANNOTATOR), (people["bob"], Role.REVIEWER)):
                Membership.objects.get_or_create(project=project, user=user, defaults={"role": role})

        if not project.items.exists():
            path = Path(settings.DATA_DIR) / "demo-trajectories.jsonl"
            with path.open("wb") as f:
                for t in trajectories(items):
                    f.write(orjson.dumps(t) + b"\n")
            job = import_path(project, admin, path)
            if job.status != ImportJob.Status.SUCCEEDED:
                self.stderr.write(f"demo import failed: {job.errors}")
                raise SystemExit(1)
            self.stdout.write(f"Imported {job.items_imported} demo trajectories ({job.steps_imported} steps).")
        self.stdout.write("")
        self.stdout.write("Logins (password in %s):" % password_file)
        self.stdout.write(f"  admin / {password}   (site admin, manager of the demo project)")
        self.stdout.write(f"  alice / {password}   (annotator)")
        self.stdout.write(f"  bob   / {password}   (reviewer)")
