"""Time GET of the review page for long trajectories (200 and 1000 steps) with the Django test client.

    .venv/bin/python bench/review_page.py [--steps 200 1000] [--repeat 15]

Runs against a scratch test database (created and destroyed here, never the real one),
with realistic step text: ~300-character observations, an action, a result, LLM
feedback with a reason and a model prediction with an explanation on every step.
Prints the median and best time of the whole request (middleware, session, view,
template) and the size of the page.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "feedback_app.settings_test")


def trajectory(n_steps: int, tid: str) -> dict:
    steps = []
    for i in range(n_steps):
        steps.append(
            {
                "observation": (
                    f"You are in the middle of a room (t={i}). Looking quickly around you, you see a cabinet 1, "
                    "a cabinet 2, a coffeemachine 1, a countertop 1, a countertop 2, a drawer 1, a fridge 1, "
                    "a garbagecan 1, a microwave 1, a shelf 1, a sinkbasin 1, a stoveburner 1, and a toaster 1."
                ),
                "action": f"go to countertop {i % 3 + 1}",
                "result": f"You arrive at countertop {i % 3 + 1}. On the countertop you see a apple 1, a bread 1, "
                          "a butterknife 2, and a mug 1.",
                "reward": 0.0 if i < n_steps - 1 else 1.0,
                "feedback": {
                    "productive": i % 3 != 1,
                    "reason": "Going to the countertop finds the apple the task asks for." if i % 3 != 1
                    else "The agent already looked here and found nothing new.",
                },
                "prediction": {
                    "probability": round((i * 37 % 100) / 100, 2),
                    "explanation": "countertop, apple: tokens that mattered most",
                },
            }
        )
    return {
        "id": tid,
        "instruction": "Your task is to: put a clean apple in the fridge.",
        "environment": "alfworld",
        "outcome": {"success": True, "reward": 1.0},
        "steps": steps,
        "model_version": "lfm-bench",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()

    import django

    django.setup()
    from django.conf import settings
    from django.db import connection
    from django.test.utils import setup_test_environment, teardown_test_environment

    scratch = tempfile.TemporaryDirectory(prefix="bench-review-")
    test_settings = connection.settings_dict.setdefault("TEST", {})
    if connection.vendor == "sqlite":
        test_settings["NAME"] = str(Path(scratch.name) / "bench.sqlite3")
    else:
        test_settings["NAME"] = "bench_review_page"
    setup_test_environment()
    settings.ALLOWED_HOSTS = ["testserver"]
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        run(args)
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)
        teardown_test_environment()
        scratch.cleanup()


def run(args) -> None:
    from django.contrib.auth import get_user_model
    from django.test import Client
    from django.urls import reverse

    from annotation import queue
    from annotation.kinds import get_kind
    from annotation.models import Item, ItemPayload, Membership, Prediction, Project, Role

    user = get_user_model().objects.create_user("bench", password="bench-password-123")
    client = Client()
    client.force_login(user)
    print(f"database: {__import__('django.db').db.connection.vendor}; {args.repeat} requests each after one warm-up")
    for n in args.steps:
        project = Project.objects.create(name=f"bench {n}", answers_per_item=1)
        Membership.objects.create(project=project, user=user, role=Role.ANNOTATOR)
        kind = get_kind(project.kind)
        parsed = kind.parse_line(trajectory(n, f"bench-{n}"), 1)
        item = Item.objects.create(project=project, seq=1, external_id=parsed.external_id,
                                   step_count=parsed.step_count)
        ItemPayload.objects.create(item=item, data=parsed.payload)
        Prediction.objects.create(item=item, model_version=parsed.model_version, data=parsed.prediction)
        assert queue.next_item(project, user) == item
        url = reverse("review-item", args=[project.pk, item.pk])
        first = client.get(url)
        assert first.status_code == 200, first.status_code
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            r = client.get(url)
            times.append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 200
        size_kb = len(r.content) / 1024
        print(f"{n:>5} steps: median {statistics.median(times):7.1f} ms, best {min(times):7.1f} ms, "
              f"page {size_kb:,.0f} KiB")


if __name__ == "__main__":
    main()
