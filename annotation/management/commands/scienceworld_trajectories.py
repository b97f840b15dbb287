"""Generate labelled ScienceWorld trajectories as native JSONL (see annotation/scienceworld.py)."""

import json
import sys
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from annotation.scienceworld import (
    SPLITS,
    GenerationConfig,
    GenerationStats,
    ScienceWorldUnavailable,
    generate_trajectories,
    scienceworld_version,
    summary,
    task_names,
    unavailable_reason,
)


class Command(BaseCommand):
    help = (
        "Play ScienceWorld's gold action sequences with wrong actions inserted at random (seeded) places, "
        "label every step by the environment's score, and write one native trajectory per line "
        "(import it with import_items). Needs the scienceworld package and Java."
    )

    def add_arguments(self, parser):
        parser.add_argument("--out", required=True, help="the JSONL file to write ('-' for stdout)")
        parser.add_argument("--per-task", type=int, default=2, help="trajectories per task type (default 2)")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--max-steps", type=int, help="cut trajectories at this many steps")
        parser.add_argument("--tasks", nargs="+", metavar="TASK", help="task names (default: all 30)")
        parser.add_argument("--split", default="train", choices=SPLITS, help="which variations (default train)")
        parser.add_argument("--wrong-rate", type=float, default=0.4,
                            help="probability of wrong action(s) before each gold action (default 0.4)")
        parser.add_argument("--simplifications", default="",
                            help="ScienceWorld simplifications, comma separated (e.g. openDoors or easy)")
        parser.add_argument("--workers", type=int, default=1,
                            help="processes, one simulator each (about 1 GB of memory apiece)")
        parser.add_argument("--list-tasks", action="store_true", help="print the task names and stop")

    def handle(self, *args, out, per_task, seed, max_steps, tasks, split, wrong_rate, simplifications,
               workers, list_tasks, **options):
        reason = unavailable_reason()
        if reason:
            raise CommandError(f"ScienceWorld is not available: {reason}.")
        if list_tasks:
            for name in task_names():
                self.stdout.write(name)
            return
        try:
            config = GenerationConfig(
                per_task=per_task, seed=seed, tasks=tasks, split=split, max_steps=max_steps,
                wrong_rate=wrong_rate, simplifications=simplifications,
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if workers < 1:
            raise CommandError("--workers must be at least 1.")
        verbosity = options.get("verbosity", 1)
        stats = GenerationStats()
        started = time.monotonic()
        to_stdout = out == "-"
        path = None if to_stdout else Path(out)
        f = sys.stdout if to_stdout else open(path, "w", encoding="utf-8")  # line by line, as they come
        try:
            for traj in generate_trajectories(config, workers=workers, stats=stats):
                f.write(json.dumps(traj, ensure_ascii=False) + "\n")
                f.flush()
                if verbosity >= 2:
                    m = traj["meta"]
                    self.stderr.write(
                        f"{m['task']} variation {m['variation']}: {len(traj['steps'])} steps, "
                        f"{m['wrong_actions']} wrong, {m['retries']} replays"
                    )
        except (ScienceWorldUnavailable, ValueError) as exc:
            raise CommandError(str(exc)) from None
        finally:
            if not to_stdout:
                f.close()
        wall = time.monotonic() - started
        where = "stdout" if to_stdout else str(path)
        (self.stderr if to_stdout else self.stdout).write(
            f"ScienceWorld {scienceworld_version()}: {summary(stats, wall)} -> {where}"
        )
