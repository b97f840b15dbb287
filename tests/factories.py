"""Small builders for tests: users, projects with members, trajectories."""

import itertools
import time

from django.contrib.auth import get_user_model

from annotation.kinds import get_kind
from annotation.models import Item, ItemPayload, Membership, Prediction, Project, Role

_seq = itertools.count(1)
PASSWORD = "correct-horse-battery"


def make_user(username=None, **extra):
    username = username or f"user{next(_seq)}"
    return get_user_model().objects.create_user(username=username, password=PASSWORD, **extra)


def make_project(name="Demo", answers_per_item=1, **extra) -> Project:
    return Project.objects.create(name=name, answers_per_item=answers_per_item, **extra)


def add_member(project, role: str, username=None):
    user = make_user(username)
    Membership.objects.create(project=project, user=user, role=role)
    return user


def trajectory(n_steps=3, *, with_feedback=True, with_prediction=True, instruction="Put the apple in the fridge", tid=None):
    """A native-format trajectory dict (one JSONL line)."""
    steps = []
    for i in range(n_steps):
        step = {"observation": f"You are in the kitchen (t={i}).", "action": f"go to counter {i}", "result": f"You arrive at counter {i}."}
        if with_feedback:
            step["feedback"] = {"productive": i % 2 == 0, "reason": f"step {i} moves toward the goal" if i % 2 == 0 else "wanders"}
        if with_prediction:
            step["prediction"] = {"probability": round(0.2 + 0.6 * (i % 3) / 2, 3), "explanation": "counter"}
        steps.append(step)
    out = {"instruction": instruction, "environment": "alfworld", "outcome": {"success": True, "reward": 1.0}, "steps": steps}
    if tid is not None:
        out["id"] = tid
    if with_prediction:
        out["model_version"] = "lfm-test"
    return out


def make_items(project, count=3, n_steps=3, **kw) -> list[Item]:
    """Items through the kind's own parser, as an import would store them."""
    kind = get_kind(project.kind)
    start = (Item.objects.filter(project=project).order_by("-seq").values_list("seq", flat=True).first() or 0) + 1
    items = []
    for i in range(count):
        parsed = kind.parse_line(trajectory(n_steps, tid=f"t{start + i}", **kw), i + 1)
        priority = kind.uncertainty(parsed.prediction) if parsed.prediction else 0.0
        item = Item.objects.create(project=project, seq=start + i, external_id=parsed.external_id,
                                   step_count=parsed.step_count, priority=priority)
        ItemPayload.objects.create(item=item, data=parsed.payload)
        if parsed.prediction:
            Prediction.objects.create(item=item, model_version=parsed.model_version, data=parsed.prediction,
                                      uncertainty=priority)
        items.append(item)
    return items


def full_answer(item, verdict="agree"):
    """An answer giving `verdict` on every step of the item."""
    return {"steps": [{"step": i, "verdict": verdict} for i in range(item.step_count)], "notes": ""}


ROLES = [Role.MANAGER, Role.REVIEWER, Role.ANNOTATOR, Role.VIEWER]


def wait_until(what, predicate, timeout, interval=0.05, logs=lambda: ""):
    """predicate()'s first true value, polled every `interval` s; fails after `timeout` s with `logs()`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}\n{logs()}")
