#!/usr/bin/env python
"""CPU per answer of the review loop's requests, without HTTP: Django's WSGI handler called directly,
in a loop, on one thread, against the benchmark database on PostgreSQL.

    .venv/bin/python bench/review_call_cpu.py                     # both loops, 300 answers each
    .venv/bin/python bench/review_call_cpu.py --loop one -n 1000
    .venv/bin/python bench/review_call_cpu.py --loop one --profile /tmp/one.prof   # CPU-time cProfile

What bench/load_reviewers.py measures as the server's CPU per answer, less the HTTP server, the bridge
to the request threads and the contention of a loaded machine, so it moves much less between runs and
shows what a change to the request path saves. Reviewers (3 by default, as many as the project's
answers per item) take turns, one answer each, so items fill up as under load and two submits in
three leave the item open, the third completes it. Each answer is one reviewer's: `two` claims the next
item (POST next/) and submits an answer to it; `one` submits with ?next=1, whose response brings the
next item. The first --warmup answers are not counted (statements get prepared after 5 runs on a
connection). It prints the process's CPU time and wall time per answer, and the part of the wall time
spent waiting for PostgreSQL is the difference; then the CPU time of the database's backends per
answer (from /proc, in clock ticks: read it over a few hundred answers or more).

The database is bench/load_reviewers.py's feedback_bench_<steps> (made if missing), its project reset
to a fresh queue before each loop; the same settings as the server there (prepared statements and
the connection pool on).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _reviewers as R  # noqa: E402
from load_reviewers import answer_body  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100_000, help="project size in steps (default 100000)")
    ap.add_argument("--loop", choices=["one", "two", "both"], default="both")
    ap.add_argument("-n", "--answers", type=int, default=300, help="answers counted per loop")
    ap.add_argument("--warmup", type=int, default=30, help="answers first, not counted")
    ap.add_argument("--reviewers", type=int, default=3,
                    help="reviewers taking turns, one answer each (default 3, as many as answers per item)")
    ap.add_argument("--profile", help="write a cProfile (CPU time) of the counted answers here (one loop)")
    args = ap.parse_args()
    if args.profile and args.loop == "both":
        ap.error("--profile needs one --loop")

    db_name, info = R.prepare_database(args.steps)
    R.django_setup(db_name)
    from django.core.handlers.wsgi import WSGIHandler
    from django.db import connection

    project_id = info["project"]
    tokens = [token for _, token in R.make_reviewers(project_id, args.reviewers, prefix="bench-cpu")]
    handler = WSGIHandler()

    def post(token: str, path: str, body: bytes = b"", query: str = "") -> tuple[int, bytes]:
        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": path, "QUERY_STRING": query, "SERVER_NAME": "127.0.0.1",
                   "SERVER_PORT": "80", "HTTP_HOST": "127.0.0.1", "REMOTE_ADDR": "127.0.0.1",
                   "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr,
                   "CONTENT_LENGTH": str(len(body)), "CONTENT_TYPE": "application/json",
                   "HTTP_AUTHORIZATION": f"Token {token}"}
        status = []
        content = b"".join(handler(environ, lambda s, headers, exc_info=None: status.append(int(s[:3]))))
        return status[0], content

    def expect(code: int, got: tuple[int, bytes]) -> dict:
        if got[0] != code:
            raise SystemExit(f"expected {code}, got {got[0]}: {got[1][:300]!r}")
        return json.loads(got[1])

    base = f"/api/projects/{project_id}"
    for loop in (["two", "one"] if args.loop == "both" else [args.loop]):
        R.reset_project(project_id, answers_per_item=3)
        connection.close()
        holding = [expect(200, post(token, f"{base}/next/")) for token in tokens]  # each reviewer's item
        profiler = None
        for k in range(args.warmup + args.answers):
            if k == args.warmup:
                if args.profile:
                    import cProfile

                    profiler = cProfile.Profile(time.process_time)
                    profiler.enable()
                cpu0, wall0, pg0 = time.process_time(), time.perf_counter(), R.postgres_cpu(db_name)
            r = k % len(tokens)
            token, item = tokens[r], holding[r]
            path = f"{base}/items/{item['id']}/answer/"
            if loop == "one":
                holding[r] = expect(201, post(token, path, answer_body(item["step_count"]), "next=1"))["next_item"]
            else:
                expect(201, post(token, path, answer_body(item["step_count"])))
                holding[r] = expect(200, post(token, f"{base}/next/"))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        pg = R.cpu_delta(pg0, R.postgres_cpu(db_name))
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
        print(f"{loop} call{'s' if loop == 'two' else ''} per answer, {args.answers} answers on "
              f"{info['steps']:,} steps: CPU {1000 * cpu / args.answers:.2f} ms per answer, "
              f"wall {1000 * wall / args.answers:.2f} ms (waiting for PostgreSQL: the difference); "
              f"PostgreSQL's CPU {1000 * pg / args.answers:.2f} ms per answer")


if __name__ == "__main__":
    main()
