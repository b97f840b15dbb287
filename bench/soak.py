#!/usr/bin/env python
"""Soak test of the review loop: 64 reviewers for 10 minutes against the production server, then a
check of every acknowledged answer against the database.

    .venv/bin/python bench/soak.py                         # 64 reviewers, 600 s, N = 3, 1,000,000 steps
    .venv/bin/python bench/soak.py -d 60 -r 16 --steps 10000 --answers-per-item 2
    .venv/bin/python bench/soak.py --one-call              # each submit brings the next item (?next=1)

The server is `manage.py serve` as production runs it (DEBUG off, PostgreSQL, Redis; see
bench/load_reviewers.py, whose benchmark database and project this reuses, reset to a fresh queue
first). With N = 2 or 3 answers per item several reviewers hold leases on the same items at once,
so the claim and submit paths are contested all the time.

Each reviewer takes the next item (with --one-call: the submit brings it, ?next=1, and a repeated
submit must bring the same one) and submits an answer with its own content (a verdict per step
drawn at random, a reason on some steps, notes naming the reviewer and item); now and then it sends
the same answer twice (the second must answer 200 and store nothing new). It logs every answer the
server acknowledged with a 2xx (item id, sha256 of the answer content) and every failure (non-2xx,
connection error, timeout, a response whose content differs from what was sent), one JSONL file
per reviewer in --log-dir. A 503 (the database is unreachable, answered with Retry-After) is sent
again after 1 s, up to 30 times, as a client honouring Retry-After does; the retries are logged and
counted in the report (--no-retry counts a 503 as a failure). A submit retried after a 503 may find
its first send stored after all (the commit went through, the response did not): then 200 with the
same content is the right answer.

At the end, with the server stopped, the logs are compared with the database:
- no failures;
- every acknowledged answer is stored exactly once (one row per item and reviewer, submitted) with
  the content that was sent;
- no answer that no reviewer had acknowledged;
- no item with more than N submitted answers; each item's answer_count equals its submitted answers,
  and items with N answers are no longer open (done or final), the others open;
- leases: nobody holds a lease on an item they answered, on an item that is not open, or more than
  one lease; submitted answers plus active leases never exceed N on an item; the leases left are
  exactly those of reviewers whose last claimed item was not yet answered;
- one `answer.submitted` audit event per answer.
It prints a verdict and exits 1 on any violation.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _reviewers as R  # noqa: E402

VERDICTS = ["agree", "agree", "agree", "disagree", "unsure"]
RETRIES = 30
RETRY_PAUSE_S = 1.0


def content_hash(data: dict) -> str:
    """What a reviewer decides, independent of what the server adds (resolved labels)."""
    steps = sorted((int(s["step"]), s.get("verdict"), s.get("reason") or "") for s in data.get("steps", []))
    canon = json.dumps({"steps": steps, "notes": data.get("notes") or ""}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()


class Reviewer:
    def __init__(self, index: int, username: str, token: str, port: int, project_id: int, log_dir: Path, seed: int,
                 one_call: bool = False):
        self.index, self.username = index, username
        self.one_call = one_call  # submit with ?next=1: the response brings the next item
        self.conn = R.Connection("127.0.0.1", port, token)
        self.project_id = project_id
        self.rng = random.Random(seed * 1000 + index)
        self.log_path = log_dir / f"reviewer-{index:03d}.jsonl"
        self.log = open(self.log_path, "w")
        self.acked: dict[int, str] = {}  # item id -> content hash the server acknowledged
        self.failures: list[dict] = []
        self.holding: int | None = None  # item claimed and not yet answered
        self.next_lat: list[float] = []
        self.submit_lat: list[float] = []
        self.answer_times: list[float] = []
        self.drained = 0
        self.repeats = 0
        self.retried = 0  # 503 answers (database unavailable) retried, as their Retry-After asks

    def record(self, entry: dict):
        entry["t"] = round(time.time(), 3)
        self.log.write(json.dumps(entry) + "\n")

    def fail(self, **entry):
        entry["ok"] = False
        self.failures.append(entry)
        self.record(entry)

    async def call(self, op: str, path: str, body: bytes | None = None, item: int | None = None):
        """(status, body, retried): a 503 (the database is unreachable) is sent again after a pause, up to
        RETRIES times, like a client that honours Retry-After; every retry is logged."""
        retried = False
        for attempt in range(RETRIES + 1):
            status, resp = await self.conn.request("POST", path, body)
            if status != 503 or attempt == RETRIES:
                return status, resp, retried
            self.retried += 1
            retried = True
            self.record({"ok": None, "op": op, "item": item, "status": 503, "retry": attempt + 1,
                         "error": R.error_kind(op, status, resp)})
            await asyncio.sleep(RETRY_PAUSE_S)
        raise AssertionError("unreachable")

    def answer_for(self, item: dict) -> dict:
        steps = []
        for i in range(item["step_count"]):
            verdict = self.rng.choice(VERDICTS)
            step = {"step": i, "verdict": verdict}
            if self.rng.random() < 0.2:
                step["reason"] = f"step {i}: {self.rng.choice(['wanders', 'progress', 'redundant', 'unclear'])}"
            steps.append(step)
        return {"steps": steps, "notes": f"{self.username} on item {item['id']} #{self.rng.randrange(10**9)}"}

    async def run(self, t_end: float):
        p = self.project_id
        brought = None  # with one_call: the next item, which came with the last submit's response
        while time.perf_counter() < t_end:
            if brought is not None:
                item, brought = brought, None
            else:
                t0 = time.perf_counter()
                try:
                    status, body, _ = await self.call("next", f"/api/projects/{p}/next/")
                except (R.HttpError, OSError, asyncio.TimeoutError) as exc:
                    self.fail(op="next", error=f"{type(exc).__name__}: {exc}")
                    await asyncio.sleep(0.1)
                    continue
                self.next_lat.append(time.perf_counter() - t0)
                if status == 204:
                    self.drained += 1
                    await asyncio.sleep(1.0)
                    continue
                if status != 200:
                    self.fail(op="next", status=status, error=R.error_kind("next", status, body))
                    continue
                item = json.loads(body)
            if self.holding is not None and self.holding != item["id"]:
                self.fail(op="next", error=f"got item {item['id']} while holding {self.holding}")
            self.holding = item["id"]
            if item["id"] in self.acked:
                self.fail(op="next", item=item["id"], error="got back an item it had already answered")
            data = self.answer_for(item)
            h = content_hash(data)
            payload = json.dumps({"data": data, "time_spent_ms": self.rng.randint(5000, 90000)}).encode()
            path = f"/api/projects/{p}/items/{item['id']}/answer/{'?next=1' if self.one_call else ''}"
            sends = 2 if self.rng.random() < 0.05 else 1
            for attempt in range(sends):
                t2 = time.perf_counter()
                try:
                    status, body, retried = await self.call("submit", path, payload, item["id"])
                except (R.HttpError, OSError, asyncio.TimeoutError) as exc:
                    # the outcome is unknown: the answer may or may not be stored
                    self.fail(op="submit", item=item["id"], hash=h, error=f"{type(exc).__name__}: {exc}",
                              unknown_outcome=True)
                    brought = None
                    break
                self.submit_lat.append(time.perf_counter() - t2)
                expected = 201 if attempt == 0 else 200
                # after a 503 the first send may have been stored after all: then 200 (the same answer) is right
                if status != expected and not (retried and attempt == 0 and status == 200):
                    self.fail(op="submit", item=item["id"], hash=h, status=status,
                              error=R.error_kind(f"submit (send {attempt + 1}, expected {expected})", status, body),
                              unknown_outcome=200 <= status < 300)
                    if not 200 <= status < 300:
                        brought = None
                        break
                if 200 <= status < 300:
                    stored = json.loads(body)
                    if content_hash(stored.get("data") or {}) != h:
                        self.fail(op="submit", item=item["id"], hash=h, error="the response holds other content")
                    if attempt == 0:
                        self.acked[item["id"]] = h
                        self.holding = None
                        self.answer_times.append(time.time())
                        self.record({"ok": True, "item": item["id"], "hash": h, "status": status})
                    else:
                        self.repeats += 1
                        self.record({"ok": True, "item": item["id"], "hash": h, "status": status, "repeat": True})
                    if self.one_call:
                        nxt = stored.get("next_item")
                        if attempt > 0 and (nxt or {}).get("id") != (brought or {}).get("id"):
                            self.fail(op="submit", item=item["id"], error="the same submit again brought another "
                                      f"next item ({(nxt or {}).get('id')}, not {(brought or {}).get('id')})")
                        brought = nxt
                        if nxt is not None:
                            self.holding = nxt["id"]  # claimed for us with the submit

    async def close(self):
        await self.conn.close()
        self.log.close()


def verify(project_id: int, n: int, reviewers: list[Reviewer]) -> list[str]:
    from django.db.models import Count, Q
    from django.utils import timezone

    from annotation.models import Answer, AuditEvent, Item, Lease

    problems: list[str] = []

    def problem(msg: str):
        problems.append(msg)

    by_user = {r.username: r for r in reviewers}
    unknown = {(r.username, f["item"]) for r in reviewers for f in r.failures if f.get("unknown_outcome")}
    for r in reviewers:
        for f in r.failures:
            problem(f"client failure ({r.username}): {f}")

    answers = list(Answer.objects.filter(item__project_id=project_id).values_list(
        "pk", "item_id", "user__username", "status", "data"))
    seen: Counter = Counter()
    for pk, item_id, username, status, data in answers:
        seen[(username, item_id)] += 1
        r = by_user.get(username)
        acked = r.acked.get(item_id) if r else None
        if acked is None:
            why = "its request failed with an unknown outcome" if (username, item_id) in unknown else "never acknowledged"
            problem(f"answer {pk} by {username} on item {item_id} ({status}) that no client holds: {why}")
            continue
        if status != Answer.Status.SUBMITTED:
            problem(f"answer {pk} by {username} on item {item_id} is {status}, acknowledged as submitted")
        if content_hash(data) != acked:
            problem(f"answer {pk} by {username} on item {item_id}: stored content differs from what was sent")
    for key, count in seen.items():
        if count > 1:
            problem(f"{count} answers by {key[0]} on item {key[1]}")
    acked_total = 0
    for r in reviewers:
        for item_id in r.acked:
            acked_total += 1
            if seen[(r.username, item_id)] == 0:
                problem(f"acknowledged answer by {r.username} on item {item_id} is missing")

    items = Item.objects.filter(project_id=project_id).annotate(
        submitted=Count("answers", filter=Q(answers__status=Answer.Status.SUBMITTED)))
    over = wrong_count = wrong_state = 0
    for item in items.filter(Q(submitted__gt=0) | Q(answer_count__gt=0) | ~Q(state=Item.State.OPEN)).iterator():
        if item.submitted > n:
            over += 1
            problem(f"item {item.pk} has {item.submitted} answers, N = {n}")
        if item.answer_count != item.submitted:
            wrong_count += 1
            problem(f"item {item.pk}: answer_count {item.answer_count}, {item.submitted} submitted answers")
        full = item.submitted >= n
        if full == (item.state == Item.State.OPEN):
            wrong_state += 1
            problem(f"item {item.pk} is {item.state} with {item.submitted} of {n} answers")

    now = timezone.now()
    leases = list(Lease.objects.filter(item__project_id=project_id).values_list(
        "item_id", "user__username", "expires_at", "item__state"))
    per_user = Counter(u for _, u, exp, _ in leases if exp > now)
    for user, count in per_user.items():
        if count > 1:
            problem(f"{user} holds {count} active leases")
    answered = set(seen)
    active_per_item: Counter = Counter()
    for item_id, user, exp, state in leases:
        if (user, item_id) in answered:
            problem(f"{user} still holds a lease on item {item_id}, which they answered")
        if state != Item.State.OPEN:
            problem(f"lease of {user} on item {item_id}, which is {state}")
        if exp > now:
            active_per_item[item_id] += 1
    submitted_per_item = Counter(i for (_, i), c in seen.items())
    for item_id, held in active_per_item.items():
        if held + submitted_per_item[item_id] > n:
            problem(f"item {item_id}: {submitted_per_item[item_id]} answers + {held} active leases > N = {n}")
    expected = {(r.username, r.holding) for r in reviewers if r.holding is not None}
    actual = {(u, i) for i, u, exp, _ in leases if exp > now}
    for u, i in sorted(actual - expected):
        problem(f"lease of {u} on item {i}, but that client holds no unanswered item there")
    for u, i in sorted(expected - actual):
        problem(f"{u} claimed item {i} and did not answer it, but holds no lease on it")

    audits = AuditEvent.objects.filter(project_id=project_id, verb="answer.submitted").count()
    if audits != len(answers):
        problem(f"{audits} answer.submitted audit events for {len(answers)} answers")
    verify.summary = {"answers_in_db": len(answers), "acknowledged": acked_total, "leases_left": len(leases),
                      "items_touched": len(submitted_per_item), "over_n": over, "wrong_count": wrong_count,
                      "wrong_state": wrong_state, "items_full": sum(1 for c in submitted_per_item.values() if c >= n)}
    return problems


async def soak(reviewers: list[Reviewer], duration: float, progress_every: float = 60.0):
    t_start = time.perf_counter()
    t_end = t_start + duration

    async def report():
        last, t_last = 0, t_start
        while time.perf_counter() < t_end:
            await asyncio.sleep(min(progress_every, max(0.1, t_end - time.perf_counter())))
            total = sum(len(r.acked) for r in reviewers)
            failures = sum(len(r.failures) for r in reviewers)
            now = time.perf_counter()
            print(f"  {now - t_start:5.0f} s: {total:,} answers ({(total - last) / (now - t_last):.1f}/s lately), "
                  f"{failures} failures, load average {R.loadavg()}", flush=True)
            last, t_last = total, now

    reporter = asyncio.create_task(report())
    await asyncio.gather(*(r.run(t_end) for r in reviewers))
    reporter.cancel()
    for r in reviewers:
        await r.close()
    return time.perf_counter() - t_start


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-d", "--duration", type=float, default=600.0, help="seconds (default 600)")
    ap.add_argument("-r", "--reviewers", type=int, default=64, help="concurrent reviewers (default 64)")
    ap.add_argument("--answers-per-item", type=int, default=3, help="the project's N (default 3)")
    # 100,000 steps hold 30,012 answer slots at N = 3: 64 reviewers fill them in about 5 minutes
    ap.add_argument("--steps", type=int, default=1_000_000, help="project size in steps (default 1,000,000)")
    ap.add_argument("--web-processes", type=int, default=int(os.environ.get("WEB_PROCESSES", "2")))
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--log-dir", help="where the reviewers' logs go (default: a new folder in /tmp)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-retry", action="store_true",
                    help="count a 503 (database unreachable) as a failure at once instead of retrying it")
    ap.add_argument("--rebuild", action="store_true", help="make the benchmark database again")
    ap.add_argument("--one-call", action="store_true",
                    help="submit with ?next=1, whose response brings the next item (next/ only when none came)")
    args = ap.parse_args()
    n = args.answers_per_item
    if args.no_retry:
        global RETRIES
        RETRIES = 0
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="soak-reviewers-"))
    log_dir.mkdir(parents=True, exist_ok=True)

    db_name, info = R.prepare_database(args.steps, rebuild=args.rebuild)
    R.django_setup(db_name)
    project_id = info["project"]
    R.reset_project(project_id, answers_per_item=n)
    accounts = R.make_reviewers(project_id, args.reviewers)
    from django.db import connection

    connection.close()
    print(f"{db_name}: project {project_id}, {info['items']:,} items, {info['steps']:,} steps, N = {n}; "
          f"{args.reviewers} reviewers for {args.duration:.0f} s; logs in {log_dir}")
    server = R.Server(db_name, web_processes=args.web_processes, workers=args.workers)
    load_before = R.loadavg()
    try:
        server.start()
        print(f"server: {server.description}; PostgreSQL + Redis; {os.cpu_count()} CPUs; load average {load_before}",
              flush=True)
        reviewers = [Reviewer(i, u, tok, server.port, project_id, log_dir, args.seed, args.one_call)
                     for i, (u, tok) in enumerate(accounts)]
        seconds = asyncio.run(soak(reviewers, args.duration))
        alive = server.proc.poll() is None
    finally:
        server.stop()
    load_after = R.loadavg()

    problems = verify(project_id, n, reviewers)
    if not alive:
        problems.insert(0, f"the server exited during the run; see {server.log_path}")
    summary = verify.summary
    nexts = [x for r in reviewers for x in r.next_lat]
    submits = [x for r in reviewers for x in r.submit_lat]
    n50, n95, n99 = R.pcts(nexts)
    s50, s95, s99 = R.pcts(submits)
    failures = sum(len(r.failures) for r in reviewers)
    kinds = Counter(f.get("error", "")[:90] for r in reviewers for f in r.failures)
    print(f"\nsoak: {args.reviewers} reviewers, {seconds:.0f} s, N = {n}, {info['steps']:,} steps "
          f"({info['items']:,} items); server: {server.description}; load average before / after: "
          f"{load_before} / {load_after}")
    if args.one_call:
        print(f"one call per answer: submit latency is the submit that brings the next item; next/ ran only "
              f"{len(nexts):,} times (a reviewer's first item, and after a failed submit or an empty queue)")
    retried = sum(r.retried for r in reviewers)
    print(f"| answers acknowledged | answers/s | repeated submits | next p50 / p95 / p99 ms | "
          f"submit p50 / p95 / p99 ms | client failures | 503s retried | answers in DB | items with N answers | "
          f"leases left |")
    print("|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    print(f"| {summary['acknowledged']:,} | {summary['acknowledged'] / seconds:.1f} | "
          f"{sum(r.repeats for r in reviewers)} | {R.ms(n50)} / {R.ms(n95)} / {R.ms(n99)} | "
          f"{R.ms(s50)} / {R.ms(s95)} / {R.ms(s99)} | {failures} | {retried} | {summary['answers_in_db']:,} | "
          f"{summary['items_full']:,} | {summary['leases_left']} |")
    if kinds:
        print("failures by kind: " + "; ".join(f"{k} x{v}" for k, v in kinds.most_common(10)))
    if sum(r.drained for r in reviewers):
        print(f"(the queue ran empty {sum(r.drained for r in reviewers)} times: a bigger --steps keeps it busy)")
    if problems:
        # what the database holds first: client failures explain them but are listed after
        problems.sort(key=lambda p: p.startswith("client failure"))
        print(f"\nVERDICT: FAIL, {len(problems)} violation(s):")
        for p in problems[:40]:
            print(f"  - {p}")
        if len(problems) > 40:
            print(f"  ... and {len(problems) - 40} more")
        sys.exit(1)
    print("\nVERDICT: PASS: 0 errors; every acknowledged answer stored exactly once with its content; no "
          f"unsent answer; no item above N = {n}; counts, states and leases consistent."
          + (f" ({retried} requests answered 503, database unreachable, were retried and then succeeded.)"
             if retried else ""))


if __name__ == "__main__":
    main()
