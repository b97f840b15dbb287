"""Step examples and their text, in the LFM paper's format.

The paper's reward model reads one step as::

    Task: {task}
    Before: {before}
    Action: {action}
    After: {after}
    Question: was this helpful?
    Answer:

`render` adds a short recent context (the last few actions and what they gave) between the task
and the step, one ``Earlier:`` line per step, and clips long fields so that the step itself stays
in the model's window. Nothing here needs torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

#: How many earlier (action, result) pairs `steps_from_trajectory` keeps per step (the paper's 20).
STORED_CONTEXT = 20
#: Default number of earlier steps rendered in front of the step.
DEFAULT_CONTEXT_STEPS = 2
#: Default character budget of one field (task, before, action, after).
DEFAULT_FIELD_CHARS = 600
#: Default character budget of one earlier action or result.
DEFAULT_CONTEXT_CHARS = 120

QUESTION = "Question: was this helpful?"
ANSWER = "Answer:"

#: Where a label came from: a person (weight 1) or an LLM's feedback (weight `llm_label_weight`).
SOURCES = ("human", "llm")


@dataclass
class StepExample:
    """One step of a trajectory, with its label when it has one.

    `context` holds the most recent earlier steps as (action, result) pairs, oldest first.
    `label` is True for "productive", False for "not productive", None when unknown (scoring).
    `weight` multiplies the example's loss; `source` ("human" or "llm") picks the extra factor
    `LFMConfig.llm_label_weight` for LLM labels at training time. `reason` is an optional
    free-text justification (a seq2seq model may learn to write it after "Yes."/"No.").
    `key` identifies the step (for example "<item id>#<step index>").
    """

    task: str
    before: str
    action: str
    after: str
    context: list[tuple[str, str]] = field(default_factory=list)
    label: bool | None = None
    weight: float = 1.0
    key: str = ""
    source: str = "human"
    reason: str = ""

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        if self.weight < 0:
            raise ValueError("weight must be >= 0")


def clip(text: str, limit: int | None) -> str:
    """Shorten `text` to about `limit` characters, keeping its start and its end around an ellipsis."""
    text = " ".join(text.split())
    if limit is None or len(text) <= limit:
        return text
    if limit < 8:
        return text[:limit]
    head = (limit - 3) * 2 // 3
    tail = limit - 3 - head
    return f"{text[:head].rstrip()} … {text[len(text) - tail:].lstrip()}"


def render(
    example: StepExample,
    context_steps: int = DEFAULT_CONTEXT_STEPS,
    *,
    field_chars: int | None = DEFAULT_FIELD_CHARS,
    context_chars: int | None = DEFAULT_CONTEXT_CHARS,
) -> str:
    """The model's input text for one step (whitespace inside fields collapsed to single spaces)."""
    lines = [f"Task: {clip(example.task, field_chars)}"]
    if context_steps > 0:
        for action, result in example.context[-context_steps:]:
            lines.append(f"Earlier: {clip(action, context_chars)} -> {clip(result, context_chars)}")
    lines += [
        f"Before: {clip(example.before, field_chars)}",
        f"Action: {clip(example.action, field_chars)}",
        f"After: {clip(example.after, field_chars)}",
        QUESTION,
        ANSWER,
    ]
    return "\n".join(lines)


def step_after(steps: list[dict], i: int) -> str:
    """What followed step i: its result, else the next step's observation, else nothing."""
    s = steps[i]
    if s.get("result") is not None:
        return s["result"]
    return steps[i + 1]["observation"] if i + 1 < len(steps) else ""


def steps_from_trajectory(
    payload: Mapping[str, Any],
    *,
    labels: Mapping[int, bool | None] | None = None,
    reasons: Mapping[int, str] | None = None,
    use_llm_feedback: bool = False,
    item_key: str | None = None,
) -> list[StepExample]:
    """One example per step of an `lfm_trajectory` payload (instruction, steps[...]).

    Without arguments every label is None (for scoring a whole trajectory). `labels` maps step
    index -> the label a person stands behind (source "human"); with `use_llm_feedback`, a step
    that has no human label but carries LLM feedback gets the feedback's label (source "llm").
    Keys are "<item_key>#<i>" (item_key defaults to the payload's "id", else just "<i>").
    """
    steps = payload["steps"]
    task = payload["instruction"]
    if item_key is None:
        item_key = str(payload.get("id") or "")
    labels = labels or {}
    reasons = reasons or {}
    afters = [step_after(steps, i) for i in range(len(steps))]
    out = []
    for i, s in enumerate(steps):
        start = max(0, i - STORED_CONTEXT)
        context = [(steps[j]["action"], afters[j]) for j in range(start, i)]
        label: bool | None = None
        source = "human"
        reason = reasons.get(i, "")
        if labels.get(i) is not None:
            label = bool(labels[i])
        elif use_llm_feedback and s.get("feedback") is not None:
            label = bool(s["feedback"]["productive"])
            source = "llm"
            reason = reason or s["feedback"].get("reason", "")
        out.append(
            StepExample(
                task=task,
                before=s.get("observation", ""),
                action=s["action"],
                after=afters[i],
                context=context,
                label=label,
                key=f"{item_key}#{i}" if item_key else str(i),
                source=source,
                reason=reason,
            )
        )
    return out


def example_from_row(row: Mapping[str, Any], *, source: str = "human") -> StepExample:
    """An example from an exported reward-model row {task, step, action, before, after, label, feedback}.

    Those rows carry no earlier steps, so the example has no context.
    """
    feedback = row.get("feedback") or []
    key = f"{row.get('item_id', '')}#{row.get('step', '')}"
    return StepExample(
        task=row["task"],
        before=row.get("before", ""),
        action=row["action"],
        after=row.get("after", ""),
        label=None if row.get("label") is None else bool(row["label"]),
        key=key,
        source=source,
        reason=feedback[0] if feedback else "",
    )


def labelled(examples: Iterable[StepExample]) -> list[StepExample]:
    """The examples that have a label."""
    return [e for e in examples if e.label is not None]
