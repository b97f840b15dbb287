#!/usr/bin/env python3
"""Play a reviewer through the REST API, so the model loop can be watched end to end from outside.

    scripts/play_reviewer.py --host http://localhost:8000 --username alice --password ... \\
        --project 1 --labels 200 [--noise 0.1] [--seed 0] [--watch]
    scripts/play_reviewer.py ... --username alice,bob --labels 200    # a project with 2 answers per item

Gets an API token, then claims items from the project's queue (POST /api/projects/<id>/next/) and
submits an answer for every step of each (POST .../items/<item_id>/answer/?next=1, whose response
brings the next item: one call per item), until it has given
`--labels` step labels or the queue is empty. A step's label is the LLM's imported label, flipped
with probability `--noise` (seeded by `--seed` and the item, so every simulated reviewer flips the
same steps: they play one consistent "truth" that differs from the LLM's); a step without LLM feedback is labelled by a fixed
rule: an action is productive unless it is looking around, checking the inventory, examining, or
got "Nothing happens." back. The answer agrees or disagrees with the label the page would show
(the LLM's, else the model's prediction), or gives the label outright when nothing is shown.

Several reviewers (`--username alice,bob`, one password) play in turn, each giving `--labels` step
labels; the queue serves them the same items in the same order, so a project that needs N answers
per item gets its final labels when N reviewers play. At the end it lists the project's training runs. With `--watch` it then follows the newest run
until it is over and prints the new model version's held-out F1 next to the F1 of the version
that was promoted when it was trained. Listing runs and versions needs the manager role; labelling
needs annotator or above.

The password may also come from $FEEDBACK_PASSWORD; without either it is asked for. Needs nothing
but the Python standard library.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import random
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

WASTE_PREFIXES = ("look", "inventory", "examine")
FINISHED = ("succeeded", "failed", "cancelled")


class ApiError(Exception):
    """An HTTP error (status, with the server's `detail`) or an unreachable server (status None)."""

    def __init__(self, status: int | None, message: str, method: str = "", path: str = ""):
        self.status = status
        self.message = message
        where = f"{method} {path}: " if method else ""
        code = f"HTTP {status}: " if status else ""
        super().__init__(f"{where}{code}{message}")


class Client:
    """JSON over HTTP against the app's /api/, with a token once `login` succeeded."""

    def __init__(self, host: str, token: str | None = None, timeout: float = 60.0):
        self.host = host.rstrip("/")
        self.token = token
        self.timeout = timeout

    def request(self, method: str, path: str, body: dict | None = None, query: dict | None = None):
        """(status, parsed JSON or None); raises ApiError for 4xx/5xx and unreachable servers."""
        url = f"{self.host}/api/{path.lstrip('/')}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Token {self.token}"
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
                return resp.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, _detail(exc), method, path) from None
        except urllib.error.URLError as exc:
            raise ApiError(None, f"cannot reach {self.host} ({exc.reason})", method, path) from None
        except (TimeoutError, ConnectionError) as exc:
            raise ApiError(None, f"no answer from {self.host} ({exc})", method, path) from None

    def get(self, path: str, **query):
        return self.request("GET", path, query=query or None)[1]

    def post(self, path: str, body: dict | None = None):
        return self.request("POST", path, body)

    def login(self, username: str, password: str) -> str:
        _, body = self.post("auth/token/", {"username": username, "password": password})
        self.token = body["token"]
        return self.token


def _detail(exc: urllib.error.HTTPError) -> str:
    """The server's {"detail": ...} of an error response, else its reason."""
    try:
        body = json.loads(exc.read() or b"null")
    except (ValueError, OSError):
        body = None
    if isinstance(body, dict) and body.get("detail"):
        return str(body["detail"])
    return str(exc.reason or "error")


# --- answering an item ------------------------------------------------------------------


def rule_label(step: dict) -> bool:
    action = (step.get("action") or "").strip().lower()
    result = (step.get("result") or "").strip().lower()
    return not (action.startswith(WASTE_PREFIXES) or result == "nothing happens.")


def shown_labels(payload: dict, prediction: dict | None) -> list[bool | None]:
    """The label the review page shows per step: the LLM's feedback, else the model's prediction."""
    preds = {p["step"]: p for p in ((prediction or {}).get("data") or {}).get("steps", [])}
    out: list[bool | None] = []
    for i, step in enumerate(payload["steps"]):
        fb = step.get("feedback")
        if fb is not None:
            out.append(bool(fb["productive"]))
        elif i in preds:
            out.append(preds[i]["probability"] >= 0.5)
        else:
            out.append(None)
    return out


def build_answer(item: dict, rng: random.Random, noise: float) -> tuple[dict, int]:
    """(answer data with a verdict or label for every step, how many LLM labels were flipped)."""
    payload = item["payload"]
    shown = shown_labels(payload, item.get("prediction"))
    steps, flipped = [], 0
    for i, step in enumerate(payload["steps"]):
        fb = step.get("feedback")
        if fb is None:
            label = rule_label(step)
        else:
            label = bool(fb["productive"])
            if rng.random() < noise:
                label, flipped = not label, flipped + 1
        if shown[i] is None:
            steps.append({"step": i, "label": label})
        else:
            steps.append({"step": i, "verdict": "agree" if label == shown[i] else "disagree"})
    return {"steps": steps, "notes": ""}, flipped


def play(client: Client, project: int, labels: int, *, noise: float = 0.1, seed: int = 0,
         out=print, err=None) -> dict:
    """Answer items from the queue until `labels` step labels are given or nothing is left.
    Returns {items, labels, flipped, skipped}."""
    err = err or (lambda msg: print(msg, file=sys.stderr))
    given = done = flipped = 0
    refused: set[int] = set()
    item = None
    while given < labels:
        if item is None:
            status, item = client.post(f"projects/{project}/next/")
            if status == 204 or item is None:
                out("the queue is empty for this reviewer")
                break
        item_id = item["id"]
        if item_id in refused:
            out(f"only items that were refused are left (item {item_id} again); stopping")
            break
        data, n_flipped = build_answer(item, random.Random(f"{seed}:{item_id}"), noise)
        n_steps = len(data["steps"])
        # the submit brings the next item (one call per item), unless this is the last one to answer
        more = given + n_steps < labels
        item = None
        try:
            _, answer = client.post(f"projects/{project}/items/{item_id}/answer/{'?next=1' if more else ''}",
                                    {"data": data, "time_spent_ms": 1000 * n_steps, "draft": False})
        except ApiError as exc:
            if exc.status not in (400, 409):
                raise
            why = "taken" if exc.status == 409 else "refused"
            err(f"item {item_id} {why}: {exc.message}; moving on to the next item")
            refused.add(item_id)
            try:
                client.post(f"projects/{project}/items/{item_id}/skip/")
            except ApiError as skip_exc:
                err(f"could not give item {item_id} back: {skip_exc}")
            continue
        given += n_steps
        flipped += n_flipped
        done += 1
        if done % 10 == 0:
            out(f"{done} items, {given} step labels")
        if more:
            item = answer["next_item"]
            if item is None:
                out("the queue is empty for this reviewer")
                break
    out(f"answered {done} items with {given} step labels ({flipped} LLM labels flipped)")
    return {"items": done, "labels": given, "flipped": flipped, "skipped": len(refused)}


# --- runs and versions ------------------------------------------------------------------------


def _f(x) -> str:
    return "—" if x is None else f"{x:.3f}"


def describe_run(run: dict) -> str:
    p = run.get("progress") or {}
    text = f"run {run['id']} {run['status']}"
    if run.get("reason"):
        text += f" ({run['reason']})"
    if run["status"] == "running":
        text += f": {p.get('phase', 'starting')}"
        if p.get("total_steps"):
            text += f", epoch {p.get('epoch', '?')}, step {p.get('step', 0)} of {p['total_steps']}"
        if p.get("loss") is not None:
            text += f", loss {p['loss']:.4f}"
        if run.get("cancel_requested"):
            text += ", cancelling"
    elif run["status"] == "succeeded" and run.get("model_version"):
        text += f", model version id {run['model_version']}"
    elif run["status"] in ("failed", "cancelled") and run.get("error"):
        text += f": {run['error'].strip().splitlines()[0][:200]}"
    return text


def print_runs(client: Client, project: int, out=print, limit: int = 10) -> list[dict]:
    page = client.get(f"projects/{project}/runs/", page_size=limit)
    runs = page["results"]
    if not runs:
        out("no training runs yet")
    else:
        out(f"training runs ({page['count']} in all, newest first):")
        for run in runs:
            out(f"  {describe_run(run)}")
    return runs


def find_version(client: Client, project: int, version_id: int) -> dict:
    page = client.get(f"projects/{project}/versions/")
    for version in page["results"]:
        if version["id"] == version_id:
            return version
    return client.get(f"projects/{project}/versions/{version_id}/")


def describe_version(version: dict) -> str:
    m, b = version.get("metrics") or {}, version.get("baseline_metrics") or {}
    text = (f"version {version['version'][:12]}{' (promoted)' if version.get('is_promoted') else ''}: "
            f"held-out F1 {_f(m.get('f1'))} on {m.get('n', 0)} steps")
    if not b:
        text += "; no baseline (no version was promoted before)"
    elif b.get("error"):
        text += f"; baseline {str(b.get('version', ''))[:12]} could not be scored: {b['error']}"
    else:
        text += f" vs baseline {str(b.get('version', ''))[:12]} F1 {_f(b.get('f1'))}"
    return text


def watch(client: Client, project: int, *, poll: float = 2.0, timeout: float = 3600.0, out=print) -> dict | None:
    """Follow the newest run until it is over; print the new version's F1 next to its baseline's.
    Returns the finished run (None when the project has none, or on timeout)."""
    runs = client.get(f"projects/{project}/runs/", page_size=1)["results"]
    if not runs:
        out("no training run to watch")
        return None
    run = runs[0]
    deadline = time.monotonic() + timeout
    last = None
    while True:
        text = describe_run(run)
        if text != last:
            out(text)
            last = text
        if run["status"] in FINISHED:
            break
        if time.monotonic() > deadline:
            out(f"run {run['id']} is still {run['status']} after {timeout:.0f} s; stopped watching")
            return None
        time.sleep(poll)
        run = client.get(f"projects/{project}/runs/{run['id']}/")
    if run["status"] == "succeeded" and run.get("model_version"):
        out(describe_version(find_version(client, project, run["model_version"])))
    return run


# --- the command line ---------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Answer a project's queue through the REST API as a reviewer.")
    parser.add_argument("--host", default="http://localhost:8000", help="the app's address")
    parser.add_argument("--username", required=True,
                        help="the reviewer, or several separated by commas (same password), who play in turn")
    parser.add_argument("--password", help="default: $FEEDBACK_PASSWORD, else asked for")
    parser.add_argument("--project", type=int, required=True, help="the project id")
    parser.add_argument("--labels", type=int, default=200, help="stop after this many step labels")
    parser.add_argument("--noise", type=float, default=0.1, help="chance of flipping the LLM's label")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--watch", action="store_true", help="follow the newest training run to its end")
    parser.add_argument("--poll", type=float, default=2.0, help="seconds between polls with --watch")
    parser.add_argument("--timeout", type=float, default=3600.0, help="longest wait for a run with --watch")
    args = parser.parse_args(argv)
    if not 0.0 <= args.noise <= 1.0:
        parser.error("--noise must be between 0 and 1")
    if args.labels < 0:
        parser.error("--labels must be 0 or more")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    usernames = [u.strip() for u in args.username.split(",") if u.strip()]
    password = args.password or os.environ.get("FEEDBACK_PASSWORD") or getpass.getpass("password: ")
    clients = []
    for username in usernames:
        client = Client(args.host)
        try:
            client.login(username, password)
        except ApiError as exc:
            if exc.status == 400:
                print(f"cannot log in as {username}: {exc.message}", file=sys.stderr)
            else:
                print(f"cannot log in: {exc}", file=sys.stderr)
            return 2
        clients.append((username, client))
    for username, client in clients:
        if len(clients) > 1:
            print(f"== {username}")
        try:
            play(client, args.project, args.labels, noise=args.noise, seed=args.seed)
        except ApiError as exc:
            if exc.status == 404:
                print(f"project {args.project}: no such project, or {username} is not a member", file=sys.stderr)
            elif exc.status == 403:
                print(f"{username} may not answer in project {args.project}: {exc.message}", file=sys.stderr)
            else:
                print(f"stopped: {exc}", file=sys.stderr)
            return 1
    for n, (username, client) in enumerate(clients):
        try:
            print_runs(client, args.project)
            if args.watch:
                run = watch(client, args.project, poll=args.poll, timeout=args.timeout)
                if run is None or run["status"] != "succeeded":
                    return 1
            return 0
        except ApiError as exc:
            if exc.status == 403 and n + 1 < len(clients):
                continue  # another of the reviewers may be a manager
            if exc.status == 403:
                print(f"{username} may not see the project's training runs (that needs the manager role)",
                      file=sys.stderr)
            else:
                print(f"stopped: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
