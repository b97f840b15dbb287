"""Weak step labels from the LFM code's LLM feedback records.

The LFM pipeline (`experiments/get_llm_feedback.py` of language_feedback_models) cuts each rollout
into snapshots of 20 steps, asks an LLM about each snapshot and saves one record per answer,
``feedback.{i}.json.bz2``::

    {"prompt": "...", "fname": "<rollout file>", "response": "...",
     "snapshot": {"fname": ..., "render": "Task: ...\\nBefore: ...\\n----------\\nStep 7\\n"
                  "Your action: ...\\nResult: ...", "render_start": 7, "render_end": 26}}

Numbering (read from that code, not assumed): a rollout is a list ``traj`` whose entry 0 is the
start (no action); the snapshot starting at ``render_start`` shows ``traj[render_start:
render_start + 20]`` and heads each step with its *absolute* index in ``traj`` ("Step 7", ...).
``render_end`` is the index of the last step shown, so the range is inclusive: [render_start,
render_end]. The LLM answers with those absolute numbers. The app's trajectories (the kind's
rollout import) drop ``traj[0]``, so rollout step N is the payload's ``steps[N - 1]``
(``step_offset`` = 1). Records whose render numbers its steps from 0 or 1 instead (the code's
unused ``adjust_render``) are recognised and mapped onto ``render_start`` as well, and a render
that shows exactly ``render_end - render_start`` steps (an exclusive end) is accepted. Which
convention a record uses is decided from the "Step N" lines of its render; a record whose lines fit
none of them is an error, and so is a bullet that names a step the snapshot did not show.

Bullets are ``- <step nums>: <reason>`` lines (also ``*`` or ``•``; ``Step``/``Steps`` and bold
markers around the numbers are allowed). Step numbers may be single (``3``), lists (``2, 4``,
``2 and 4``) or ranges (``3-5``, ``3–5``, ``3 to 5``: all of 3, 4 and 5). A bullet whose text before
the colon is not step numbers (a summary line, say) is not a step bullet and is skipped. Parsing
stops at a heading (``#Summary``, ``#Improvement``), whose bullets are about the whole snapshot.

The prompt style is recognised from the prompt's question:

- ``intent`` (default) and ``positive``: "list the steps when you saw helpful things". A listed
  step is productive, with its reason. An unlisted step gets no label: the LLM listed "only
  important helpful steps", so silence is not a "no".
- ``reason``: "for each step ... answer yes or no". Each bullet's own yes/no is the label. The
  LLM was asked about every step, so a step it did not list is not productive ("not listed").
  (A response cut off by the token limit also leaves steps unlisted; ``unlisted="none"`` avoids
  labelling them.)
- ``action``: "for steps where you think the player chose the wrong action ... write the correct
  action". A listed step is not productive ("better action: ..."); unlisted steps get no label.
- anything else: like ``intent``.

``unlisted="negative"`` labels every unlisted shown step not productive whatever the style, as the
LFM code's ``build_reward_data.py`` does (``label = step in feedback``); ``"none"`` never does.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

STYLES = ("intent", "positive", "reason", "action", "unknown")
UNLISTED = ("auto", "negative", "none")
MAX_RANGE = 1000
NOT_LISTED = "not listed"

_PROMPT_MARKERS = (
    ("reason", 'answer "yes" or "no" to indicate whether it was helpful'),
    ("action", "write the correct action"),
    ("intent", "#Summary"),
    ("positive", "list the steps when you saw helpul things"),
    ("positive", "list the steps when you saw helpful things"),
)

_HEADER_RE = re.compile(r"^Step (\d+)[ \t]*$", re.MULTILINE)
_ACTION_RE = re.compile(r"^Your action: ?(.*)$", re.MULTILINE)
_BULLET_RE = re.compile(r"^\s*(?:[-*•])\s+(.*\S)\s*$")
_HEADING_RE = re.compile(r"^\s*#")
_YES_NO_RE = re.compile(r"^\W*(yes|no)\b[\s.,:;!*_\-–—)]*(.*)$", re.IGNORECASE | re.DOTALL)
_NO_COLON_RE = re.compile(r"^(.*?\d)\s*(?:[-–—,.]|\s)\s*((?:yes|no)\b.*)$", re.IGNORECASE | re.DOTALL)
_RANGE_RE = re.compile(r"^(\d+)\s*(?:-|–|—|to)\s*(\d+)$")


class FeedbackError(ValueError):
    """A record that cannot be used; `field` names the part of the record."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@dataclass
class StepLabel:
    index: int  # the payload's step index (0-based)
    step: int  # the step number the LLM saw
    productive: bool
    reason: str


@dataclass
class FeedbackRecord:
    fname: str
    style: str
    labels: list[StepLabel]
    shown: list[int]  # payload indices the snapshot showed, in order
    actions: dict[int, str] = field(default_factory=dict)  # payload index -> the action the render shows


# --- bullets ------------------------------------------------------------------------


def parse_step_spec(text: str) -> list[int] | None:
    """Step numbers of a bullet head ("3", "Steps 2, 4", "3-5", "**Step 7**"), or None if it is not one.

    Raises ValueError for a range that runs backwards or is longer than MAX_RANGE.
    """
    head = text.replace("*", "").replace("`", "").strip()
    head = re.sub(r"\s*\([^)]*\)\s*$", "", head)  # "Step 3 (open door)"
    head = re.sub(r"^(?:steps?|#)\s*", "", head, flags=re.IGNORECASE).strip()
    if not head or not head[0].isdigit():
        return None
    out: list[int] = []
    for part in re.split(r"\s*(?:,|;|&|/|\band\b)\s*", head):
        part = re.sub(r"^(?:steps?|#)\s*", "", part.strip(), flags=re.IGNORECASE)
        if not part:
            continue
        if part.isdigit():
            out.append(int(part))
            continue
        m = _RANGE_RE.match(part)
        if m is None:
            return None
        a, b = int(m.group(1)), int(m.group(2))
        if b < a:
            raise ValueError(f"the range {a}-{b} runs backwards")
        if b - a + 1 > MAX_RANGE:
            raise ValueError(f"the range {a}-{b} is longer than {MAX_RANGE} steps")
        out.extend(range(a, b + 1))
    return out or None


@dataclass
class Bullet:
    line: int  # 1-based line of the response
    steps: list[int]
    reason: str


def parse_bullets(response: str, *, allow_no_colon: bool = False) -> list[Bullet]:
    """The step bullets of an LLM response, in order. Raises ValueError on a malformed range."""
    bullets = []
    for n, line in enumerate(response.splitlines(), start=1):
        if _HEADING_RE.match(line):
            break
        m = _BULLET_RE.match(line)
        if m is None:
            continue
        body = m.group(1)
        head, sep, reason = body.partition(":")
        try:
            steps = parse_step_spec(head) if sep else None
            if steps is None and allow_no_colon:  # "- 3 - yes, ..." / "- Step 3, no: ..."
                m2 = _NO_COLON_RE.match(body)
                if m2 is not None:
                    head, reason = m2.group(1), m2.group(2)
                    steps = parse_step_spec(head)
        except ValueError as exc:
            raise ValueError(f"bullet on line {n}: {exc}") from None
        if steps is None:
            continue
        bullets.append(Bullet(n, steps, reason.strip()))
    return bullets


def split_yes_no(reason: str) -> tuple[bool | None, str]:
    """("yes, the door opens") -> (True, "the door opens"); (None, reason) without a leading yes/no."""
    m = _YES_NO_RE.match(reason)
    if m is None:
        return None, reason.strip()
    return m.group(1).lower() == "yes", m.group(2).strip()


def prompt_style(prompt: str) -> str:
    for style, marker in _PROMPT_MARKERS:
        if marker.lower() in prompt.lower():
            return style
    return "unknown"


# --- snapshots ---------------------------------------------------------------------


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        raise FeedbackError(f"snapshot.{name}", f"expected an integer, got {value!r}")
    return value


def shown_steps(snapshot: dict, *, step_offset: int = 1) -> tuple[dict[int, int], dict[int, str]]:
    """(step number as the LLM saw it -> payload index, payload index -> action shown)."""
    if not isinstance(snapshot, dict):
        raise FeedbackError("snapshot", "expected an object with render, render_start and render_end")
    render = snapshot.get("render")
    if not isinstance(render, str) or not render.strip():
        raise FeedbackError("snapshot.render", "missing or empty")
    start = _as_int(snapshot.get("render_start"), "render_start")
    end = _as_int(snapshot.get("render_end"), "render_end")
    if end < start:
        raise FeedbackError("snapshot", f"render_end {end} is before render_start {start}")
    headers = [int(x) for x in _HEADER_RE.findall(render)]
    if not headers:
        raise FeedbackError("snapshot.render", "shows no 'Step N' lines")
    n = len(headers)
    if headers == list(range(start, start + n)) and n in (end - start + 1, end - start):
        absolute = headers  # the LFM code: absolute rollout indices (inclusive end; exclusive accepted)
    elif headers[0] in (0, 1) and headers == list(range(headers[0], headers[0] + n)) and n in (
        end - start + 1,
        end - start,
    ):
        absolute = [start + h - headers[0] for h in headers]  # numbered within the snapshot
    else:
        shown = f"{headers[0]}..{headers[-1]}" if headers == list(range(headers[0], headers[0] + n)) else str(headers)
        raise FeedbackError(
            "snapshot",
            f"the render's step numbers ({shown}) match neither render_start..render_end ({start}..{end}) "
            "nor a numbering from 0 or 1",
        )
    mapping = {}
    for seen, abs_step in zip(headers, absolute):
        index = abs_step - step_offset
        if index < 0:
            raise FeedbackError("snapshot", f"step {abs_step} is before the first step (step_offset {step_offset})")
        mapping[seen] = index
    actions: dict[int, str] = {}
    # "Step N" is followed by "Your action: ..." in the LFM render.
    blocks = re.split(r"^Step \d+[ \t]*$", render, flags=re.MULTILINE)[1:]
    for seen, block in zip(headers, blocks):
        m = _ACTION_RE.search(block)
        if m is not None:
            actions[mapping[seen]] = m.group(1).strip()
    return mapping, actions


def parse_record(obj: Any, *, unlisted: str = "auto", step_offset: int = 1) -> FeedbackRecord:
    """One feedback record -> its per-step weak labels. Raises FeedbackError."""
    if unlisted not in UNLISTED:
        raise ValueError(f"unlisted must be one of {UNLISTED}")
    if not isinstance(obj, dict):
        raise FeedbackError("(record)", f"expected a JSON object, got {type(obj).__name__}")
    for name in ("prompt", "response"):
        if not isinstance(obj.get(name), str):
            raise FeedbackError(name, "missing or not a string")
    snapshot = obj.get("snapshot")
    fname = obj.get("fname")
    if not isinstance(fname, str) or not fname.strip():
        fname = snapshot.get("fname") if isinstance(snapshot, dict) else None
        if not isinstance(fname, str) or not fname.strip():
            raise FeedbackError("fname", "missing: the record does not say which rollout it is about")
    mapping, actions = shown_steps(snapshot, step_offset=step_offset)
    style = prompt_style(obj["prompt"])
    try:
        bullets = parse_bullets(obj["response"], allow_no_colon=style == "reason")
    except ValueError as exc:
        raise FeedbackError("response", str(exc)) from None

    shown_numbers = sorted(mapping)
    span = f"{shown_numbers[0]}..{shown_numbers[-1]}"
    verdicts: dict[int, tuple[bool, list[str]]] = {}
    undecided: set[int] = set()
    for b in bullets:
        outside = [s for s in b.steps if s not in mapping]
        if outside:
            listed = ", ".join(str(s) for s in outside[:10])
            raise FeedbackError(
                "response",
                f"bullet on line {b.line} names step {listed}, outside the snapshot (it shows steps {span})",
            )
        reason = b.reason
        if style == "reason":
            verdict, reason = split_yes_no(b.reason)
            if verdict is None:  # neither yes nor no: no label, and not "unlisted" either
                undecided.update(b.steps)
                continue
        elif style == "action":
            verdict, reason = False, f"better action: {b.reason}" if b.reason else "wrong action"
        else:
            verdict = True
        for s in b.steps:
            if s in verdicts and verdicts[s][0] != verdict:
                raise FeedbackError(
                    "response", f"bullet on line {b.line} calls step {s} not helpful, an earlier one helpful"
                    if verdict is False else f"bullet on line {b.line} calls step {s} helpful, an earlier one not"
                )
            verdicts.setdefault(s, (verdict, []))[1].append(reason)

    negative_rest = unlisted == "negative" or (unlisted == "auto" and style == "reason")
    labels = []
    for s in shown_numbers:
        if s in verdicts:
            verdict, reasons = verdicts[s]
            labels.append(StepLabel(mapping[s], s, verdict, " ".join(r for r in reasons if r)))
        elif negative_rest and s not in undecided:
            labels.append(StepLabel(mapping[s], s, False, NOT_LISTED))
    return FeedbackRecord(
        fname=fname, style=style, labels=labels, shown=[mapping[s] for s in shown_numbers], actions=actions
    )


# --- files -----------------------------------------------------------------------


def _open_text(path: Path):
    with open(path, "rb") as f:
        head = f.read(6)
    if head.startswith(b"\x1f\x8b"):
        return gzip.open(path, "rt", encoding="utf-8")
    if head.startswith(b"BZh"):
        return bz2.open(path, "rt", encoding="utf-8")
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.open(path, "rt", encoding="utf-8")
    return open(path, "rt", encoding="utf-8")


def read_records(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line, value) for each record of a file: JSON Lines, or one JSON document (an object, or an
    array of objects, numbered from 1). gzip, bzip2 and xz are recognised by their magic bytes.
    A line that is not JSON yields (line, FeedbackError)."""
    path = Path(path)
    with _open_text(path) as f:
        text = f.read()
    if text.startswith("\ufeff"):
        text = text[1:]
    stripped = text.strip()
    if not stripped:
        return
    try:
        doc = json.loads(stripped)
    except json.JSONDecodeError:
        doc = None
    else:
        if isinstance(doc, list):
            for i, value in enumerate(doc, start=1):
                yield i, value
            return
        if isinstance(doc, dict):  # one record, often pretty-printed (the LFM code's files)
            yield 1, doc
            return
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as exc:
            yield n, FeedbackError("(json)", f"invalid JSON at column {exc.colno}: {exc.msg}")


def rollout_key(fname: str, match: str = "stem") -> str:
    """The external id a record's fname stands for: its stem ("/r/123.json.bz2" -> "123"), file name or path."""
    if match == "path":
        return fname
    name = fname.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    if match == "name":
        return name
    if match != "stem":
        raise ValueError("match must be stem, name or path")
    for suffix in (".bz2", ".gz", ".xz"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    for suffix in (".jsonl", ".json"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name
