#!/usr/bin/env python
"""Load benchmark of the review loop over the REST API: C concurrent reviewers, each taking the next
item (POST /api/projects/<id>/next/) and submitting a full answer to it
(POST /api/projects/<id>/items/<item_id>/answer/), for a fixed time per concurrency level.

    .venv/bin/python bench/load_reviewers.py --steps 10000                 # C = 1, 4, 16, 64; 30 s each
    .venv/bin/python bench/load_reviewers.py --steps 100000 -c 16 -d 60 --web-processes 2
    .venv/bin/python bench/load_reviewers.py --steps 1000000 --json /tmp/load-1m.json
    .venv/bin/python bench/load_reviewers.py --steps 10000 -c 16 --rate 100  # paced: 100 answers/s in all
    .venv/bin/python bench/load_reviewers.py --steps 100000 -c 16 --rate 100 --one-call  # submit brings next

The server is the production one: `manage.py serve` (uvicorn, a supervised db_worker, DEBUG off, a
SECRET_KEY, static files by WhiteNoise) on a free port, against PostgreSQL (BENCH_PG, default
postgres://postgres@127.0.0.1:5432) and Redis (BENCH_REDIS, default redis://127.0.0.1:6379/5).

The project lives in its own database, feedback_bench_<steps>, made once: bench/import_export.py's
synthetic trajectories (10 steps on average) up to --steps steps, imported with `manage.py import_items`.
Later runs reuse it (--rebuild makes it again). Before each concurrency level the project is reset to
a fresh queue (answers, leases, finals and audit events deleted, every item open; bench setup in SQL)
so every level starts from the same state. The project's model loop is off (retrain_every 0): training
would run on the same two cores.

With --one-call each answer is one request: the submit asks for the next item too (?next=1) and its
response brings it, as a client that shows the next item right after a submit would do. The reviewer
then waits for that one call, so next, submit and cycle are all its latency (a reviewer's first item,
and one after an error, is claimed with next/ within the cycle, whose latency then counts both calls).

Each simulated reviewer is its own annotator with its own API token and one keep-alive connection
(asyncio, a minimal HTTP/1.1 client: the client shares the CPUs with the server, so it must be cheap).
Latencies are per request, measured by the client from sending the request to the end of the
response; `cycle` is next + submit of one answer. The first --warmup seconds of each level are not
counted. Errors are every non-2xx answer, connection failure or timeout, grouped by kind; a 204 from
next/ (nothing left) ends that reviewer and is reported as "drained"; the first one ends the level's
measured window, since fewer than C reviewers work from then on (a small project runs out within a level
on a fast machine: 10,000 steps hold 2,976 answers at N = 3).

By default the loop is closed: each reviewer sends its next request as soon as the last one is answered,
so the load follows the server's speed. With --rate R it is open ("paced", as wrk2 does it): the level
offers R answers/s in all, split evenly over its C reviewers; reviewer i has a schedule of intended
starts (the first at i/R seconds, then one every C/R seconds), waits for each and then does one
next + submit. Latency is measured from the intended start of the cycle, not from the moment the
request was sent (coordinated-omission correction): when the server falls behind, a reviewer sends late
and the delay counts into that cycle's next latency (and its cycle latency), as a real reviewer arriving
on time would have waited for it. Paced levels report the answers/s achieved next to the rate offered. Each level also prints its three
slowest seconds (answers in that second, next p95, slowest next), and --json keeps every second's, so a
tail can be told apart: one stall, or a level that fell behind throughout.
No cycle is started after the end of a level, even one that was due before it, so a server that falls
far behind leaves cycles uncounted and its tail latency is, if anything, understated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _reviewers as R  # noqa: E402


def answer_body(step_count: int, verdict="agree", notes="", time_spent_ms=30000) -> bytes:
    data = {"steps": [{"step": i, "verdict": verdict} for i in range(step_count)], "notes": notes}
    return json.dumps({"data": data, "time_spent_ms": time_spent_ms}).encode()


async def cycles(t_start: float, t_end: float, stats: dict, schedule: tuple[float, float] | None):
    """The reviewer's cycles until t_end, each as (latency origin, counted). Closed loop by default; with
    `schedule` = (first intended start, period) paced: each cycle waits for its intended start and its
    latency is counted from there."""
    intended = schedule[0] if schedule else None
    while True:
        if schedule:
            if intended >= t_end:
                return
            delay = intended - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        t0 = time.perf_counter()
        if t0 >= t_end:
            return
        # latency origin: when the request was sent (closed loop) or when it was due (paced; a late
        # send counts into the latency: coordinated-omission correction)
        origin = t0
        if schedule:
            origin, intended = intended, intended + schedule[1]
        counted = origin >= t_start
        if schedule and counted:
            stats["lag"].append(max(0.0, t0 - origin))
        yield origin, counted


async def call(conn: R.Connection, what: str, path: str, stats: dict, body: bytes | None = None):
    """(status, body) of one request, or None after a connection failure or timeout (counted as an error)."""
    try:
        return await conn.request("POST", path, body)
    except (R.HttpError, OSError, asyncio.TimeoutError) as exc:
        stats["errors"][f"{what}: {type(exc).__name__} {exc}"[:100]] += 1
        return None


def record(stats: dict, t_start: float, counted: bool, t_next: float, next_s: float,
           submit_s: float, cycle_s: float, t_done: float):
    """One answer: the next item arrived at t_next, next_s after the cycle's origin; the submit took
    submit_s; the whole cycle cycle_s, ending at t_done."""
    stats["answers_all"] += 1
    if counted:
        stats["records"].append((t_done, t_next - t_start, next_s, submit_s, cycle_s))


def drained(stats: dict):
    """A reviewer found nothing left: from now on fewer than C reviewers work, so the level's measured
    window ends here (a small project runs out within a level on a fast machine)."""
    stats["drained"] += 1
    stats["drained_at"] = min(stats["drained_at"], time.perf_counter())


def close_window(stats: dict, t_start: float, t_end: float, paced: bool):
    """Keep the answers of the measured window, from t_start to t_end or to the moment the first reviewer
    found the queue empty, whichever came first. Closed loop: the answers completed in it. Paced: the
    cycles due in it, also those that completed after its end (a late one is the tail, and a level that
    keeps up completes every cycle it offered)."""
    window_end = min(t_end, stats["drained_at"])
    stats["seconds"] = max(0.0, window_end - t_start)
    cutoff = stats["drained_at"] if paced else window_end
    for t_done, at, next_s, submit_s, cycle_s in stats.pop("records"):
        if t_done <= cutoff:
            stats["timeline"].append((at, next_s))  # when next answered, and its latency
            stats["next"].append(next_s)
            stats["submit"].append(submit_s)
            stats["cycle"].append(cycle_s)
            stats["answers"] += 1


DRAINED = object()  # next/ answered 204: nothing left for this reviewer


async def take_next(conn: R.Connection, project_id: int, stats: dict):
    """(the next item, when its response arrived) from POST next/; None after an error (counted, and the
    cycle is lost), or DRAINED."""
    got = await call(conn, "next", f"/api/projects/{project_id}/next/", stats)
    arrived = time.perf_counter()
    if got is None:
        await asyncio.sleep(0.05)
        return None
    if got[0] == 204:
        drained(stats)
        return DRAINED
    if got[0] != 200:
        stats["errors"][R.error_kind("next", *got)] += 1
        return None
    return json.loads(got[1]), arrived


async def reviewer(conn: R.Connection, project_id: int, t_start: float, t_end: float, stats: dict,
                   schedule: tuple[float, float] | None = None):
    """Two calls per answer: next (claim an item), then submit an answer to it."""
    async for origin, counted in cycles(t_start, t_end, stats, schedule):
        taken = await take_next(conn, project_id, stats)
        if taken is DRAINED:
            return
        if taken is None:
            continue
        item, t1 = taken
        payload = answer_body(item["step_count"])
        t2 = time.perf_counter()
        got = await call(conn, "submit", f"/api/projects/{project_id}/items/{item['id']}/answer/", stats, payload)
        if got is None:
            continue
        t3 = time.perf_counter()
        if got[0] != 201:
            stats["errors"][R.error_kind("submit", *got)] += 1
            continue
        record(stats, t_start, counted, t1, t1 - origin, t3 - t2, (t1 - origin) + (t3 - t2), t3)


async def reviewer_one_call(conn: R.Connection, project_id: int, t_start: float, t_end: float, stats: dict,
                            schedule: tuple[float, float] | None = None):
    """One call per answer: submit with ?next=1, whose response brings the next item. Only the first item
    (and one after an error) is claimed with next/, within the cycle."""
    item = None
    async for origin, counted in cycles(t_start, t_end, stats, schedule):
        if item is None:
            taken = await take_next(conn, project_id, stats)
            if taken is DRAINED:
                return
            if taken is None:
                continue
            item = taken[0]
        t2 = time.perf_counter()
        got = await call(conn, "submit", f"/api/projects/{project_id}/items/{item['id']}/answer/?next=1", stats,
                         answer_body(item["step_count"]))
        t3 = time.perf_counter()
        if got is None or got[0] != 201:
            if got is not None:
                stats["errors"][R.error_kind("submit", *got)] += 1
            item = None
            continue
        record(stats, t_start, counted, t3, t3 - origin, t3 - t2, t3 - origin, t3)
        item = json.loads(got[1])["next_item"]
        if item is None:
            drained(stats)
            return


async def sample_stolen(t_start: float, t_end: float, stats: dict):
    """Each second of the level, the share of the machine's CPU time the host took (steal): a second in
    which latency jumps while the host took CPU away was slowed from outside."""
    await asyncio.sleep(max(0.0, t_start - time.perf_counter()))
    before, second = R.machine_cpu(), 0
    while time.perf_counter() < t_end:
        await asyncio.sleep(max(0.0, t_start + second + 1 - time.perf_counter()))
        after = R.machine_cpu()
        stats["stolen"][second] = R.stolen_share(before, after)
        before, second = after, second + 1


async def run_level(port: int, project_id: int, tokens: list[str], duration: float, warmup: float,
                    rate: float | None = None, one_call: bool = False) -> dict:
    conns = [R.Connection("127.0.0.1", port, t) for t in tokens]
    stats = {"next": [], "submit": [], "cycle": [], "errors": Counter(), "answers": 0, "answers_all": 0, "drained": 0,
             "drained_at": float("inf"), "records": [], "lag": [], "timeline": [], "stolen": {}}
    now = time.perf_counter()
    t_start, t_end = now + warmup, now + warmup + duration
    # paced: reviewer i starts at i/R and then every C/R seconds, so together they offer R answers/s
    period = len(conns) / rate if rate else None
    schedules = [(now + i / rate, period) if rate else None for i in range(len(conns))]
    sampler = asyncio.create_task(sample_stolen(t_start, t_end, stats))
    loop = reviewer_one_call if one_call else reviewer
    await asyncio.gather(*(loop(c, project_id, t_start, t_end, stats, sch) for c, sch in zip(conns, schedules)))
    sampler.cancel()
    for c in conns:
        await c.close()
    close_window(stats, t_start, t_end, paced=bool(rate))
    stats["rate"] = rate
    stats["connects"] = sum(c.connects for c in conns)
    return stats


def per_second(s: dict) -> float:
    """Answers per second over the measured window (0 when the queue ran out during the warm-up)."""
    return s["answers"] / s["seconds"] if s["seconds"] else 0.0


def ran_out(s: dict) -> str:
    return f"drained {s['drained']} (first after {s['seconds']:.1f} s)  " if s["drained"] else ""


def timeline(s: dict) -> list[list]:
    """Per second of the level: [second, answers, next p95 ms, slowest next ms, % of the machine's CPU the
    host took], to see whether a tail is one stall or the whole level, and whether it came from outside."""
    per_second: dict[int, list[float]] = {}
    for at, latency in s["timeline"]:
        per_second.setdefault(int(at), []).append(latency)
    out = []
    for sec in sorted(per_second):
        values = sorted(per_second[sec])
        out.append([sec, len(values), round(1000 * R.percentile(values, 0.95), 1), round(1000 * values[-1], 1),
                    round(s["stolen"].get(sec, 0.0), 1)])
    return out


def row(c: int, s: dict) -> str:
    def per(cpu_s):
        n = s["answers_all"]
        return f"{1000 * cpu_s / n:.0f}" if n else "–"

    n50, n95, n99 = R.pcts(s["next"])
    s50, s95, s99 = R.pcts(s["submit"])
    c50, c95, c99 = R.pcts(s["cycle"])
    errs = sum(s["errors"].values())
    paced = f"{s['rate']:g} | " if s["rate"] else ""
    return (f"| {c:>3} | {s['answers']:>6,} | {per_second(s):>7.1f} | {paced}"
            f"{R.ms(n50)} / {R.ms(n95)} / {R.ms(n99)} | {R.ms(s50)} / {R.ms(s95)} / {R.ms(s99)} | "
            f"{R.ms(c50)} / {R.ms(c95)} / {R.ms(c99)} | {errs} | {s['server_cpu']:.0f}% | "
            f"{s['machine_cpu']:.0f}% / {s['stolen_cpu']:.0f}% | "
            f"{per(s['server_cpu_s'])} / {per(s['pg_cpu_s'])} | "
            f"{s['load']} |")


HEADER = ("| reviewers | answers | answers/s | next p50 / p95 / p99 ms | submit p50 / p95 / p99 ms | "
          "cycle p50 / p95 / p99 ms | errors | server CPU | machine busy / stolen | "
          "CPU ms per answer: server / PostgreSQL | "
          "load avg after |\n"
          "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--|")
# paced levels: the rate offered next to the one achieved
HEADER_PACED = (HEADER.replace("| answers/s |", "| answers/s achieved | paced at answers/s |", 1)
                .replace("|--:|", "|--:|--:|", 1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10_000, help="project size in steps (10000, 100000, 1000000)")
    ap.add_argument("-c", "--concurrency", default="1,4,16,64", help="reviewer counts, comma-separated")
    ap.add_argument("-d", "--duration", type=float, default=30.0, help="measured seconds per level")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds per level not counted")
    ap.add_argument("-k", "--reviewers", type=int, default=None, help="reviewer accounts (default: the largest C)")
    ap.add_argument("--answers-per-item", type=int, default=3, help="the project's N (default 3)")
    ap.add_argument("--web-processes", type=int, default=int(os.environ.get("WEB_PROCESSES", "2")),
                    help="manage.py serve --web-processes (default 2, one per core)")
    ap.add_argument("--workers", type=int, default=1, help="manage.py serve --workers (default 1)")
    ap.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    ap.add_argument("--rebuild", action="store_true", help="make the benchmark database again")
    ap.add_argument("--rate", type=float, default=None,
                    help="paced (open loop): answers/s offered per level, split over its reviewers; "
                         "latency from each cycle's intended start (default: closed loop)")
    ap.add_argument("--one-call", action="store_true",
                    help="one request per answer: submit with ?next=1, whose response brings the next item "
                         "(default: next, then submit)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if args.rate is not None and args.rate <= 0:
        ap.error("--rate must be positive")
    levels = [int(x) for x in args.concurrency.split(",")]
    k = args.reviewers or max(levels)

    t = time.perf_counter()
    db_name, info = R.prepare_database(args.steps, rebuild=args.rebuild)
    print(f"{db_name}: project {info['project']}, {info['items']:,} items, {info['steps']:,} steps "
          f"({'reused' if info.get('cached', True) else f'built in {time.perf_counter() - t:.0f} s'})")
    R.django_setup(db_name)
    project_id = info["project"]
    accounts = R.make_reviewers(project_id, k)

    results = []
    server = R.Server(db_name, web_processes=args.web_processes, workers=args.workers, port=args.port)
    try:
        server.start()
        print(f"server: {server.description} (pids {', '.join(map(str, server.pids()))}); "
              f"PostgreSQL + Redis; {os.cpu_count()} CPUs; load average {R.loadavg()}")
        for c in levels:
            R.reset_project(project_id, answers_per_item=args.answers_per_item)
            from django.db import connection

            connection.close()
            load_before = R.loadavg()
            cpu0, pg0, m0, w0 = server.cpu_seconds(), R.postgres_cpu(db_name), R.machine_cpu(), time.perf_counter()
            s = asyncio.run(run_level(server.port, project_id, [tok for _, tok in accounts[:c]],
                                      args.duration, args.warmup, args.rate, args.one_call))
            wall = time.perf_counter() - w0
            s["server_cpu_s"] = server.cpu_seconds() - cpu0
            s["pg_cpu_s"] = R.cpu_delta(pg0, R.postgres_cpu(db_name))
            s["server_cpu"] = 100 * s["server_cpu_s"] / wall
            m1 = R.machine_cpu()
            s["machine_cpu"] = 100 * (m1[0] - m0[0]) / max(1e-9, m1[1] - m0[1])
            s["stolen_cpu"] = R.stolen_share(m0, m1)
            s["load_before"], s["load"] = load_before, R.loadavg()
            results.append((c, s))
            n50, n95, _ = R.pcts(s["next"])
            # paced: the rate offered, and how late the reviewers sent (p95) behind their schedule
            paced = (f" of {args.rate:g} paced (sent late p95 {R.ms(R.pcts(s['lag'])[1])} ms)"
                     if args.rate else "")
            print(f"  C={c:<3} {per_second(s):6.1f}{paced} answers/s  next p50 {R.ms(n50)} ms "
                  f"p95 {R.ms(n95)} ms  errors {sum(s['errors'].values())}  "
                  f"{ran_out(s)}load {s['load']}", flush=True)
            if server.proc.poll() is not None:
                raise SystemExit(f"the server died; see {server.log_path}")
    finally:
        server.stop()

    print(f"\n{info['steps']:,} steps ({info['items']:,} items), N = {args.answers_per_item} answers per item, "
          f"{args.duration:.0f} s per level after {args.warmup:.0f} s warm-up; server: {server.description}; "
          f"PostgreSQL + Redis on this machine, {os.cpu_count()} CPUs")
    if args.rate:
        print(f"paced (open loop) at {args.rate:g} answers/s per level, split evenly over its reviewers; next and "
              f"cycle latencies measured from each cycle's intended start (coordinated-omission correction)")
    if args.one_call:
        print("one call per answer (submit with ?next=1): next, submit and cycle are that call, next and cycle "
              "measured from the cycle's origin, submit from when the call was sent")
    print(HEADER_PACED if args.rate else HEADER)
    for c, s in results:
        print(row(c, s))
    print("(latency measured by the client; cycle = next + submit of one answer; server CPU: the server's "
          "processes (dispatcher, web processes, db_worker), % of one core; machine busy: all CPUs, PostgreSQL and the client included; "
          "stolen: the part of the machine's CPU time the host took for others (steal), counted in busy; "
          "CPU ms per answer: the server's and the bench database's PostgreSQL backends' CPU time over the level "
          "(warm-up included) per answer submitted in it, which the machine's other load hardly changes)")
    for c, s in results:
        worst = sorted(timeline(s), key=lambda x: -x[2])[:3]
        if worst:
            print(f"C={c}: slowest seconds (second of the level: answers, next p95 ms, slowest next ms, "
                  "% stolen): "
                  + "; ".join(f"{w[0]}: {w[1]}, {w[2]:g}, {w[3]:g}, {w[4]:g}%" for w in worst))
    for c, s in results:
        if s["errors"] or s["drained"]:
            print(f"C={c}: errors {dict(s['errors'])}; drained reviewers {s['drained']}")
        if s["drained"]:
            print(f"C={c}: the queue ran out {s['seconds']:.1f} s into the level's {args.duration:g} s; rates and "
                  f"latencies are measured up to then (a larger --steps measures the whole level)")
    target = next((s for c, s in results if c == 16), None)
    if target is not None:
        n95 = R.pcts(target["next"])[1]
        rate = per_second(target)
        paced = f" paced at {args.rate:g} answers/s" if args.rate else ""
        print(f"target at 16 reviewers{paced} (next p95 < 50 ms, >= 100 answers/s): next p95 {R.ms(n95)} ms "
              f"{'met' if n95 < 0.05 else 'missed'}, {rate:.1f} answers/s {'met' if rate >= 100 else 'missed'}")
    if args.json:
        out = {"steps": info["steps"], "items": info["items"], "answers_per_item": args.answers_per_item,
               "one_call": args.one_call,
               "server": server.description, "duration": args.duration, "levels": []}
        for c, s in results:
            out["levels"].append({
                "reviewers": c, "rate": s["rate"], "answers": s["answers"],
                "answers_per_s": per_second(s), "seconds": s["seconds"],
                "next_ms": [x * 1000 for x in R.pcts(s["next"])], "submit_ms": [x * 1000 for x in R.pcts(s["submit"])],
                "cycle_ms": [x * 1000 for x in R.pcts(s["cycle"])], "errors": dict(s["errors"]),
                "drained": s["drained"], "server_cpu": s["server_cpu"], "machine_cpu": s["machine_cpu"],
                "stolen_cpu": s["stolen_cpu"],
                "server_cpu_ms_per_answer": 1000 * s["server_cpu_s"] / max(1, s["answers_all"]),
                "pg_cpu_ms_per_answer": 1000 * s["pg_cpu_s"] / max(1, s["answers_all"]),
                "load_before": s["load_before"], "load_after": s["load"], "timeline": timeline(s)})
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
