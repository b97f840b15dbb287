#!/usr/bin/env python
"""Import and export benchmark: N LFM trajectories through run_import, then every export format.

    python bench/import_export.py                      # 100,000 trajectories on SQLite in /tmp
    python bench/import_export.py -n 10000
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench_feedback python bench/import_export.py --reset

Every phase runs in a fresh Python process, so the peak memory printed for a phase
(ru_maxrss of that process) is the phase's own, not the leftover of an earlier one.
`rss0` is the process's memory when Django is loaded and the phase starts; `workers`
is the peak of the parser processes an import forks (0 when it parses in-process).

Phases: generate (stream the JSONL file), import (run_import), import more (a second,
smaller file into the now-large project: the rate must not drop as the project grows),
seed (bench setup, not a product path: one answer and a final label on half the items,
written with bulk_create), then each export format streamed into a byte-counting sink, and
the full-record export once more with the other prefetch setting (the default prefetches the
next chunk on PostgreSQL only), for comparison.

Without DATABASE_URL the database is SQLite under a fresh DATA_DIR in /tmp. With
DATABASE_URL, --reset empties that database first (never point it at real data).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ENV_DEFAULTS = {
    "DJANGO_SETTINGS_MODULE": "feedback_app.settings",
    "SECRET_KEY": "benchmark-only-secret-key",
    "SECURE_COOKIES": "0",
    "LOG_LEVEL": "WARNING",
}


# --- the data ------------------------------------------------------------------------------------------

ROOMS = ["kitchen", "living room", "bedroom", "bathroom", "garage", "office"]
OBJECTS = ["apple", "mug", "knife", "plate", "book", "pen", "towel", "soap", "lettuce", "egg"]
PLACES = ["countertop 1", "countertop 2", "cabinet 3", "drawer 1", "fridge 1", "sinkbasin 1", "shelf 2", "desk 1",
          "microwave 1", "stoveburner 2", "diningtable 1", "garbagecan 1"]
VERBS = ["go to", "open", "close", "take {o} from", "put {o} in/on", "examine", "use", "clean {o} with"]


def make_trajectory(rng: random.Random, i: int) -> dict:
    obj = rng.choice(OBJECTS)
    room = rng.choice(ROOMS)
    n_steps = rng.randint(6, 14)  # ~10 on average
    steps = []
    for s in range(n_steps):
        place = rng.choice(PLACES)
        verb = rng.choice(VERBS).format(o=f"{obj} {rng.randint(1, 3)}")
        productive = rng.random() < 0.45
        p = min(1.0, max(0.0, (0.7 if productive else 0.3) + rng.uniform(-0.25, 0.25)))
        seen = ", ".join(rng.sample(PLACES, 5))
        steps.append({
            "observation": f"You are in the {room}. Looking quickly around you, you see {seen}.",
            "action": f"{verb} {place}",
            "result": f"You arrive at {place}. On the {place}, you see a {rng.choice(OBJECTS)} {rng.randint(1, 4)}.",
            "feedback": {
                "productive": productive,
                "reason": (f"Going to {place} brings the agent closer to finding the {obj}." if productive
                           else f"The {obj} is not likely to be at {place}; this step does not help."),
            },
            "prediction": {"probability": round(p, 4), "explanation": f"{place} vs {obj}"},
        })
    return {
        "id": f"traj-{i:07d}",
        "instruction": f"Your task is to: put a clean {obj} in the {rng.choice(PLACES)}.",
        "environment": "alfworld",
        "outcome": {"success": rng.random() < 0.4, "reward": 1.0},
        "steps": steps,
        "model_version": "lfm-bench-1",
        "meta": {"split": "train", "seed": i},
    }


# --- phases (each runs in its own process) ---------------------------------------------------------------


def rss_now_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mib(who=resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


def cpu_seconds() -> float:
    """CPU time of this process and of the processes it waited for (parser processes)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def django_setup():
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def phase_generate(args) -> dict:
    import orjson

    rng = random.Random(args.seed)
    rss0 = rss_now_mib()
    c0, t = cpu_seconds(), time.perf_counter()
    steps = 0
    with open(args.file, "wb", buffering=1 << 20) as f:
        for i in range(args.n):
            traj = make_trajectory(rng, args.offset + i)
            steps += len(traj["steps"])
            f.write(orjson.dumps(traj, option=orjson.OPT_APPEND_NEWLINE))
    seconds, cpu = time.perf_counter() - t, cpu_seconds() - c0
    return {"seconds": seconds, "cpu": cpu, "items": args.n, "rows": steps, "rss0": rss0,
            "bytes": os.path.getsize(args.file)}


def phase_setup(args) -> dict:
    django_setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from annotation.models import Membership, Project, Role

    if args.reset:
        call_command("flush", interactive=False, verbosity=0)
    call_command("migrate", verbosity=0)
    user, _ = get_user_model().objects.get_or_create(username="bench-annotator")
    project = Project.objects.create(name=f"Benchmark {args.n}", answers_per_item=1)
    Membership.objects.create(project=project, user=user, role=Role.ANNOTATOR)
    return {"project": project.pk}


def phase_import(args) -> dict:
    django_setup()
    from annotation.importing import parse_processes, run_import
    from annotation.models import ImportJob, Item, Project

    project = Project.objects.get(pk=args.project)
    before = Item.objects.filter(project=project).count()
    job = ImportJob.objects.create(project=project, filename=Path(args.file).name, path=str(Path(args.file).resolve()),
                                   size_bytes=os.path.getsize(args.file))
    rss0 = rss_now_mib()
    c0, t = cpu_seconds(), time.perf_counter()
    job = run_import(job.pk)
    seconds, cpu = time.perf_counter() - t, cpu_seconds() - c0
    if job.status != ImportJob.Status.SUCCEEDED:
        raise SystemExit(f"import failed: {job.errors[:5]}")
    return {"seconds": seconds, "cpu": cpu, "items": job.items_imported, "rows": job.steps_imported, "rss0": rss0,
            "workers": peak_mib(resource.RUSAGE_CHILDREN), "parse_processes": parse_processes(),
            "items_before": before, "bytes": job.size_bytes}


def phase_seed(args) -> dict:
    """One answer (agree on every step) and its final label on every other item."""
    django_setup()
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction
    from django.utils import timezone

    from annotation.models import Answer, Final, Item, ItemPayload, Project

    project = Project.objects.get(pk=args.project)
    kind = project.kind_spec
    user = get_user_model().objects.get(username="bench-annotator")
    rss0 = rss_now_mib()
    c0, t = cpu_seconds(), time.perf_counter()
    seeded = 0
    steps = 0
    ids = Item.objects.live().filter(project=project).order_by("seq").values_list("pk", flat=True)
    chunk = []

    def flush(chunk):
        now = timezone.now()
        payloads = dict(ItemPayload.objects.filter(item_id__in=chunk).values_list("item_id", "data"))
        answers, finals = [], []
        for pk in chunk:
            payload = payloads[pk]
            data = {"steps": [{"step": i, "verdict": "agree", "label": bool(s.get("feedback", {}).get("productive")),
                               "reason": ""} for i, s in enumerate(payload["steps"])], "notes": ""}
            answers.append(Answer(item_id=pk, user=user, status=Answer.Status.SUBMITTED, data=data,
                                  time_spent_ms=42000, model_version="lfm-bench-1", submitted_at=now))
            labels = kind.unit_labels(data)
            methods = {u: "unanimous" for u in labels}
            finals.append(Final(item_id=pk, data=kind.build_final(payload, [data], labels, methods),
                                method=Final.Method.UNANIMOUS, decided_at=now))
        with transaction.atomic():
            Answer.objects.bulk_create(answers)
            Final.objects.bulk_create(finals)
            Item.objects.filter(pk__in=chunk).update(state=Item.State.FINAL, answer_count=1)
        return sum(len(payloads[pk]["steps"]) for pk in chunk)

    for i, pk in enumerate(ids.iterator(chunk_size=2000)):
        if i % 2:
            continue
        chunk.append(pk)
        if len(chunk) >= 1000:
            steps += flush(chunk)
            seeded += len(chunk)
            chunk = []
    if chunk:
        steps += flush(chunk)
        seeded += len(chunk)
    if connection.vendor == "postgresql":
        # answers arrive one by one in real projects and autovacuum keeps their statistics fresh;
        # after this bulk write, do what it would do before the exports are measured
        with connection.cursor() as cur:
            cur.execute(f"ANALYZE {Answer._meta.db_table}, {Final._meta.db_table}, {Item._meta.db_table}")
    return {"seconds": time.perf_counter() - t, "cpu": cpu_seconds() - c0, "items": seeded, "rows": steps, "rss0": rss0}


class CountingSink:
    def __init__(self):
        self.bytes = 0
        self.lines = 0

    def write(self, chunk: bytes):
        self.bytes += len(chunk)
        self.lines += chunk.count(b"\n")


def phase_export(args) -> dict:
    django_setup()
    from annotation.exporting import ExportFilters, available_formats, is_csv, stream_export
    from annotation.models import Item, Project

    if args.no_prefetch or args.prefetch:
        from annotation import exporting

        exporting.EXPORT_PREFETCH = bool(args.prefetch)
    project = Project.objects.get(pk=args.project)
    filters = ExportFilters(final_only=args.final_only)
    items_q = Item.objects.live().filter(project=project)
    if args.final_only:
        items_q = items_q.filter(final__isnull=False)
    items = items_q.count()
    spec = available_formats(project)[args.format]
    sink = CountingSink()
    rss0 = rss_now_mib()
    c0, t = cpu_seconds(), time.perf_counter()
    for chunk in stream_export(project, args.format, filters):
        sink.write(chunk)
    seconds, cpu = time.perf_counter() - t, cpu_seconds() - c0
    rows = sink.lines - (1 if is_csv(spec) and spec.header else 0)
    return {"seconds": seconds, "cpu": cpu, "items": items, "rows": rows, "rss0": rss0, "bytes": sink.bytes}


PHASES = {"generate": phase_generate, "setup": phase_setup, "import": phase_import, "seed": phase_seed,
          "export": phase_export}


def child_main(args):
    result = PHASES[args.phase](args)
    result["peak"] = peak_mib()
    print("RESULT " + json.dumps(result), flush=True)


# --- the driver -------------------------------------------------------------------------------------------


def run_child(env, phase: str, *extra: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", phase, *extra]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"phase {phase} failed ({proc.returncode})")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def load_after() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def fmt_row(name: str, r: dict) -> str:
    s = r["seconds"]
    items = r.get("items", 0)
    rows = r.get("rows", 0)
    workers = r.get("workers")
    return (f"| {name:<26} | {s:7.2f} | {r['cpu']:7.2f} | {items / s if s else 0:9,.0f} | "
            f"{rows / s if s else 0:11,.0f} | {r['rss0']:4.0f} | {r['peak']:4.0f} | "
            f"{'' if workers is None else f'{workers:.0f}':>7} |")


def driver(args):
    env = dict(os.environ)
    for k, v in ENV_DEFAULTS.items():
        env.setdefault(k, v)
    scratch = Path(tempfile.mkdtemp(prefix=f"bench-feedback-{args.n}-"))
    if not env.get("DATABASE_URL"):
        env["DATA_DIR"] = str(scratch / "data")
    env.setdefault("DATA_DIR", str(scratch / "data"))
    database = env.get("DATABASE_URL") or "SQLite (file, WAL)"
    data = scratch / "trajectories.jsonl"
    more = scratch / "more.jsonl"
    n_more = min(args.n, 10_000)
    results: list[tuple[str, dict]] = []
    load_before = load_after()
    try:
        results.append(("generate", run_child(env, "generate", "-n", str(args.n), "--file", str(data))))
        project = str(run_child(env, "setup", "-n", str(args.n), *(["--reset"] if args.reset else []))["project"])
        results.append(("import", run_child(env, "import", "--project", project, "--file", str(data))))
        run_child(env, "generate", "-n", str(n_more), "--file", str(more), "--offset", str(args.n), "--seed", "2")
        results.append((f"import {n_more:,} more", run_child(env, "import", "--project", project, "--file", str(more))))
        results.append(("seed answers + finals", run_child(env, "seed", "--project", project)))
        for fmt in ["jsonl", "lfm_steps", "lfm_imitation", "csv"]:
            results.append((f"export {fmt}", run_child(env, "export", "--project", project, "--format", fmt)))
        results.append(("export jsonl --final-only",
                        run_child(env, "export", "--project", project, "--format", "jsonl", "--final-only")))
        flag = "--no-prefetch" if env.get("DATABASE_URL") else "--prefetch"
        results.append((f"export jsonl, {flag[2:]}",
                        run_child(env, "export", "--project", project, "--format", "jsonl", flag)))
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"\n{args.n:,} trajectories, {results[0][1]['bytes'] / 2**20:.0f} MiB of JSONL; database: "
          f"{database.split('@')[-1]}; {os.cpu_count()} CPUs; Python {sys.version.split()[0]}; "
          f"load average before/after: {load_before} / {load_after()}")
    print("| phase                      | seconds | cpu s   |   items/s | steps|rows/s | rss0 | peak | workers |")
    print("|----------------------------|--------:|--------:|----------:|------------:|-----:|-----:|--------:|")
    for name, r in results:
        print(fmt_row(name, r))
    print("(seconds: wall clock; cpu s: this process and its parser processes, not the database server; "
          "memory in MiB; rows/s counts output lines for exports, steps otherwise)")
    if args.json:
        Path(args.json).write_text(json.dumps({"n": args.n, "database": database.split("@")[-1],
                                               "results": results}, indent=1))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=100_000, help="trajectories (default 100,000)")
    parser.add_argument("--reset", action="store_true", help="empty the DATABASE_URL database first")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--json", help="also write the results to this file")
    # internal: one phase in this process
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--project", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--format", help=argparse.SUPPRESS)
    parser.add_argument("--final-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-prefetch", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--prefetch", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--offset", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    for k, v in ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)
    if args.phase:
        child_main(args)
    else:
        driver(args)


if __name__ == "__main__":
    main()
