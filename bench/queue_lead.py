#!/usr/bin/env python
"""What a claim costs as a reviewer gets ahead of the others.

    .venv/bin/python bench/queue_lead.py                       # 1,000,000 steps; leads 0 to 50,000
    .venv/bin/python bench/queue_lead.py --steps 100000 --leads 0,1000,5000 -n 50

With N > 1 answers per item, an item a reviewer answered stays open until others answer it too, and it
stays ahead of the reviewer in the queue order (priority, then import order). A reviewer who works
faster than the rest, or alone for a while, has a lead: open items they already answered, ahead of
the first one they may take. This measures what the claim (annotation.queue.next_item, the function
behind POST next/ and a submit's ?next=1) costs for such a reviewer, by the size of the lead.

For each lead K, on bench/load_reviewers.py's feedback_bench_<steps> project (made if missing), reset
to a fresh queue with N = 3: one reviewer is given submitted answers on the first K items in queue
order and nobody else answers (bench setup in SQL, not a product path). Then the reviewer claims
the next item, each claim in a transaction that is rolled back, so every claim starts from the same
state: 5 times with nothing remembered (the claim looks for the reviewer's place from the top, as
the first claim in a process does, and again every PLACE_TTL_S or after a change to the queue's
order), then -n times from the place the claims remember. It prints the wall time per claim (median
and p95 of the later ones, in this process, which waits for PostgreSQL) and the item claimed, which
must be the first one after the lead.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _reviewers as R  # noqa: E402


class Rollback(Exception):
    pass


def give_lead(project_id: int, user_id: int, lead: int):
    """Submitted answers by `user_id` on the first `lead` items in queue order, each item's count 1."""
    from django.db import connection

    from annotation.models import Answer, Item

    it, at = Item._meta.db_table, Answer._meta.db_table
    with connection.cursor() as cur:
        cur.execute(
            f"WITH ahead AS (SELECT id FROM {it} WHERE project_id = %s AND state = 'open'"
            "  ORDER BY priority DESC, seq ASC LIMIT %s),"
            f" counted AS (UPDATE {it} SET answer_count = 1 WHERE id IN (SELECT id FROM ahead))"
            f" INSERT INTO {at} (item_id, user_id, status, data, time_spent_ms, guidelines_version,"
            "  model_version, created_at, updated_at, submitted_at)"
            " SELECT id, %s, 'submitted', '{}', 0, 1, '', now(), now(), now() FROM ahead",
            [project_id, lead, user_id])
        for table in (at, it):
            cur.execute(f"VACUUM ANALYZE {table}")


def claim_times(project_id: int, user_id: int, n: int, *, from_the_top: bool = False) -> tuple[list[float], int]:
    from django.contrib.auth import get_user_model
    from django.db import transaction

    from annotation import queue
    from annotation.models import Project

    project = Project.objects.get(pk=project_id)
    user = get_user_model().objects.get(pk=user_id)
    times, seq = [], None
    for _ in range(n):
        if from_the_top:
            queue._places.clear()
        t0 = time.perf_counter()
        try:
            with transaction.atomic():
                item = queue.next_item(project, user, with_payload=True, answer_of=user)
                times.append(time.perf_counter() - t0)
                seq = item.seq
                raise Rollback
        except Rollback:
            pass
    return times, seq


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1_000_000, help="project size in steps (default 1000000)")
    ap.add_argument("--leads", default="0,100,1000,10000,50000", help="leads to measure, comma-separated")
    ap.add_argument("-n", "--claims", type=int, default=100, help="claims timed per lead (after 10 not timed)")
    args = ap.parse_args()
    leads = [int(x) for x in args.leads.split(",")]

    db_name, info = R.prepare_database(args.steps)
    R.django_setup(db_name)
    from annotation.models import Item

    project_id = info["project"]
    (name, _), = R.make_reviewers(project_id, 1, prefix="bench-lead")
    from django.contrib.auth import get_user_model

    user_id = get_user_model().objects.get(username=name).pk
    print(f"{db_name}: {info['items']:,} items, {info['steps']:,} steps; N = 3; one reviewer; "
          f"{args.claims} claims per lead, each rolled back; load average {R.loadavg()}")
    print("| lead (open items the reviewer answered, ahead in the queue) | first claim, from the top: p50 ms "
          "| later claims, from the place: p50 ms | p95 ms | item claimed |")
    print("|--:|--:|--:|--:|--|")
    for lead in leads:
        R.reset_project(project_id, answers_per_item=3)
        give_lead(project_id, user_id, lead)
        claim_times(project_id, user_id, 10, from_the_top=True)  # statements prepared, caches warm
        top, _ = claim_times(project_id, user_id, 5, from_the_top=True)
        times, seq = claim_times(project_id, user_id, args.claims)
        times.sort()
        expected = (Item.objects.filter(project_id=project_id, state="open", answer_count=0)
                    .order_by("-priority", "seq").values_list("seq", flat=True).first())
        check = "the first after the lead" if seq == expected else f"seq {seq}, expected {expected}: WRONG"
        top.sort()
        print(f"| {lead:,} | {1000 * R.percentile(top, 0.5):.2f} | {1000 * R.percentile(times, 0.5):.2f} "
              f"| {1000 * R.percentile(times, 0.95):.2f} | {check} |", flush=True)
    R.reset_project(project_id, answers_per_item=3)


if __name__ == "__main__":
    main()
