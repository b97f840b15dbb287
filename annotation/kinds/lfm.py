"""LFM trajectories: verify a Language Feedback Model's step-by-step feedback.

An item is one agent trajectory: a task instruction, an environment, an
outcome, and steps (observation, action, result). Each step may carry the
feedback of an LLM ("was this action productive?" yes/no with a reason, as in
the LFM paper's pipeline) and a model's prediction (probability that the step
was productive, with an explanation). A reviewer gives a verdict per step
(agree, disagree, unsure), may edit the reason, and writes notes.

Two import formats:
- native JSONL: one `Trajectory` object per line (schema below);
- the LFM code's rollout format: {"traj": [{"action", "prompt", "after": {"obs":
  {"instruction", "observation"}, "info", "reward", "terminated"}}], "setting_id"},
  one rollout per line (or a single rollout as the whole file).
"""

from __future__ import annotations

import csv
import io
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from . import register
from .base import ExportFormat, ImportLineError, Kind, LineError, ParsedItem, pydantic_errors

MAX_STEPS = 5000
CONTEXT_STEPS = 20  # the LFM paper's snapshot/context length


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class StepFeedback(Strict):
    """What an LLM (or an LFM) said about one step."""

    productive: bool
    reason: str = ""
    source: str = Field(default="llm", max_length=100)


class StepPrediction(Strict):
    probability: float = Field(ge=0.0, le=1.0, description="P(step was productive)")
    explanation: str = ""


class Step(Strict):
    observation: str = Field(description="What the agent saw before acting.")
    action: str = Field(min_length=1)
    result: str | None = Field(default=None, description="What the environment answered.")
    reward: float | None = None
    admissible_actions: list[str] | None = None
    prompt: str | None = Field(default=None, description="The policy's input at this step, if recorded.")
    feedback: StepFeedback | None = None
    prediction: StepPrediction | None = None


class Outcome(Strict):
    success: bool | None = None
    reward: float | None = None


class Trajectory(Strict):
    id: str | None = Field(default=None, max_length=255)
    instruction: str = Field(min_length=1)
    environment: str = Field(default="", max_length=200)
    outcome: Outcome = Field(default_factory=Outcome)
    steps: list[Step] = Field(min_length=1, max_length=MAX_STEPS)
    model_version: str | None = Field(default=None, max_length=100, description="Who made the step predictions.")
    meta: dict[str, Any] = Field(default_factory=dict)


class PredictedStep(Strict):
    step: int = Field(ge=0)
    probability: float = Field(ge=0.0, le=1.0)
    explanation: str = ""
    attributions: list[tuple[str, float]] | None = None


class TrajectoryPrediction(Strict):
    model_version: str
    steps: list[PredictedStep]


class StepVerdict(Strict):
    step: int = Field(ge=0)
    verdict: Literal["agree", "disagree", "unsure"] | None = None
    label: bool | None = Field(default=None, description="The productive label the reviewer stands behind.")
    reason: str = Field(default="", max_length=5000)


class TrajectoryFeedback(Strict):
    steps: list[StepVerdict] = Field(default_factory=list)
    notes: str = Field(default="", max_length=20000)

    @field_validator("steps")
    @classmethod
    def unique_steps(cls, steps):
        seen = set()
        for s in steps:
            if s.step in seen:
                raise ValueError(f"step {s.step} appears twice")
            seen.add(s.step)
        return steps


# --- rollout format (LFM code) ---------------------------------------------------


class RolloutObs(BaseModel):
    instruction: str
    observation: str


class RolloutAfter(BaseModel):
    obs: RolloutObs
    info: dict[str, Any] = Field(default_factory=dict)
    reward: float | None = None
    terminated: bool = False


class RolloutStep(BaseModel):
    action: str | None = None
    prompt: str | None = None
    after: RolloutAfter


class Rollout(BaseModel):
    traj: list[RolloutStep] = Field(min_length=2, max_length=MAX_STEPS + 1)
    setting_id: Any = None


def rollout_to_trajectory(r: Rollout) -> dict:
    first = r.traj[0].after
    steps = []
    rewards = []
    for prev, cur in zip(r.traj, r.traj[1:]):
        if cur.action is None:
            raise ValueError("only the first step of a rollout may have no action")
        admissible = prev.after.info.get("admissible_actions")
        steps.append(
            {
                "observation": prev.after.obs.observation,
                "action": cur.action,
                "result": cur.after.obs.observation,
                "reward": cur.after.reward,
                "admissible_actions": list(admissible) if isinstance(admissible, list) else None,
                "prompt": cur.prompt,
            }
        )
        if cur.after.reward is not None:
            rewards.append(cur.after.reward)
    return {
        "id": None if r.setting_id is None else str(r.setting_id),
        "instruction": first.obs.instruction,
        "environment": str(first.info.get("env", "")) if isinstance(first.info, dict) else "",
        "outcome": {"success": any(x > 0 for x in rewards), "reward": sum(rewards) if rewards else None},
        "steps": steps,
    }


# --- the kind ----------------------------------------------------------------


def shown_labels(payload: dict, prediction: dict | None) -> list[bool | None]:
    """The label a reviewer verifies per step: the imported LLM feedback, else the model's prediction."""
    steps = payload["steps"]
    labels: list[bool | None] = [None] * len(steps)
    preds = {p["step"]: p for p in (prediction or {}).get("steps", [])}
    for i, step in enumerate(steps):
        fb = step.get("feedback")
        if fb is not None:
            labels[i] = fb["productive"]
        elif i in preds:
            labels[i] = preds[i]["probability"] >= 0.5
    return labels


class LFMTrajectoryKind(Kind):
    def parse_line(self, obj: Any, line: int) -> ParsedItem:
        if not isinstance(obj, dict):
            raise ImportLineError([LineError(line, "(line)", f"expected a JSON object, got {type(obj).__name__}")])
        if "traj" in obj:
            try:
                rollout = Rollout.model_validate(obj)
                obj = rollout_to_trajectory(rollout)
            except ValidationError as exc:
                raise ImportLineError(pydantic_errors(line, exc)) from None
            except ValueError as exc:
                raise ImportLineError([LineError(line, "traj", str(exc))]) from None
        try:
            traj = Trajectory.model_validate(obj)
        except ValidationError as exc:
            raise ImportLineError(pydantic_errors(line, exc)) from None
        payload = traj.model_dump(mode="json", exclude_none=True)
        prediction = None
        pred_steps = []
        for i, step in enumerate(payload["steps"]):
            p = step.pop("prediction", None)
            if p is not None:
                pred_steps.append({"step": i, **p})
        if pred_steps:
            prediction = {"model_version": traj.model_version or "imported", "steps": pred_steps}
        payload.pop("model_version", None)
        external_id = payload.pop("id", None) or ""
        return ParsedItem(
            external_id=external_id,
            payload=payload,
            step_count=len(payload["steps"]),
            prediction=prediction,
            model_version=prediction["model_version"] if prediction else None,
        )

    def units(self, payload: dict) -> list[str]:
        return [str(i) for i in range(len(payload["steps"]))]

    def uncertainty(self, prediction: dict) -> float:
        """Mean over steps of 1 - |2p - 1|: 1 when every step is a coin flip, 0 when all are sure."""
        steps = prediction.get("steps") or []
        if not steps:
            return 0.0
        return sum(1.0 - abs(2.0 * s["probability"] - 1.0) for s in steps) / len(steps)

    def clean_feedback(self, payload: dict, prediction: dict | None, data: dict, *, final: bool) -> dict:
        try:
            fb = TrajectoryFeedback.model_validate(data)
        except ValidationError as exc:
            raise ImportLineError(pydantic_errors(0, exc)) from None
        n = len(payload["steps"])
        shown = shown_labels(payload, prediction)
        errors: list[LineError] = []
        by_step = {}
        # Errors name the step number (steps.<step>.<field>), not the position in the posted list.
        for sv in fb.steps:
            if sv.step >= n:
                errors.append(LineError(0, f"steps.{sv.step}.step", f"step {sv.step} does not exist (0..{n - 1})"))
                continue
            label, was_shown = sv.label, shown[sv.step]
            if sv.verdict == "agree":
                if was_shown is None:
                    if label is None:
                        errors.append(LineError(0, f"steps.{sv.step}.verdict", "nothing to agree with: set label"))
                elif label is not None and label != was_shown:
                    errors.append(LineError(0, f"steps.{sv.step}.label", "agree contradicts the label given"))
                else:
                    label = was_shown
            elif sv.verdict == "disagree":
                if label is None:
                    if was_shown is None:
                        errors.append(LineError(0, f"steps.{sv.step}.label", "disagree needs the corrected label"))
                    else:
                        label = not was_shown
                elif was_shown is not None and label == was_shown:
                    errors.append(LineError(0, f"steps.{sv.step}.label", "disagree with the same label as shown"))
            elif sv.verdict == "unsure":
                label = None
            by_step[sv.step] = {"step": sv.step, "verdict": sv.verdict, "label": label, "reason": sv.reason}
        if final:
            missing = [i for i in range(n) if i not in by_step or (by_step[i]["verdict"] is None and by_step[i]["label"] is None)]
            if missing:
                shown_missing = ", ".join(str(m) for m in missing[:20]) + (" …" if len(missing) > 20 else "")
                errors.append(LineError(0, "steps", f"{len(missing)} step(s) have no verdict: {shown_missing}"))
        if errors:
            raise ImportLineError(errors)
        return {"steps": [by_step[k] for k in sorted(by_step)], "notes": fb.notes}

    def unit_labels(self, answer_data: dict) -> dict[str, Any]:
        return {str(s["step"]): s.get("label") for s in answer_data.get("steps", [])}

    def build_final(self, payload, answers, resolved, methods):
        reasons: dict[int, list[str]] = {}
        for a in answers:
            for s in a.get("steps", []):
                if s.get("reason"):
                    reasons.setdefault(s["step"], []).append(s["reason"])
        steps = []
        for i in range(len(payload["steps"])):
            key = str(i)
            steps.append(
                {
                    "step": i,
                    "label": resolved.get(key),
                    "method": methods.get(key),
                    "reasons": reasons.get(i, []),
                }
            )
        notes = [a["notes"] for a in answers if a.get("notes")]
        return {"steps": steps, "notes": notes}


# --- export rows -----------------------------------------------------------------


def _final_steps(record: dict) -> dict[int, dict]:
    final = record.get("final")
    return {s["step"]: s for s in final["data"]["steps"]} if final else {}


def _after(steps: list[dict], i: int) -> str:
    s = steps[i]
    if s.get("result") is not None:
        return s["result"]
    return steps[i + 1]["observation"] if i + 1 < len(steps) else ""


def lfm_step_rows(record: dict):
    """The LFM paper's reward-model rows: {task, step, action, before, after, label, feedback}."""
    payload = record["payload"]
    steps = payload["steps"]
    finals = _final_steps(record)
    for i, s in enumerate(steps):
        f = finals.get(i)
        if f is None or f["label"] is None:
            continue
        feedback = list(f["reasons"]) or ([s["feedback"]["reason"]] if s.get("feedback", {}).get("reason") else [])
        yield {
            "task": payload["instruction"],
            "step": i,
            "action": s["action"],
            "before": s["observation"],
            "after": _after(steps, i),
            "label": f["label"],
            "feedback": feedback,
            "item_id": record["id"],
            "external_id": record["external_id"],
        }


def policy_prompt(payload: dict, i: int) -> str:
    """The behaviour-cloning input for step i, in the LFM code's render: task, before, last 20 steps."""
    steps = payload["steps"]
    start = max(0, i - CONTEXT_STEPS)
    parts = [f"Task: {payload['instruction']}", f"Before: {steps[start]['observation']}", "----------"]
    for j in range(start, i):
        parts += [f"Step {j}", f"Your action: {steps[j]['action']}", f"Result: {_after(steps, j)}"]
    parts += [f"Step {i}", f"Observation: {steps[i]['observation']}", "Your action:"]
    return "\n".join(parts)


def lfm_imitation_rows(record: dict):
    """Imitation-learning pairs {inp, out} from steps whose final label is productive."""
    payload = record["payload"]
    finals = _final_steps(record)
    for i, s in enumerate(payload["steps"]):
        f = finals.get(i)
        if f is not None and f["label"] is True:
            yield {"inp": s.get("prompt") or policy_prompt(payload, i), "out": s["action"]}


CSV_HEADER = [
    "item_id", "external_id", "step", "instruction", "observation", "action", "result",
    "llm_label", "llm_reason", "model_probability", "model_version",
    "answers", "labels", "final_label", "final_method", "final_reasons",
]


def csv_rows(record: dict):
    """One row per step: the step, what the LLM and the model said, every answer's label, the final label."""
    payload = record["payload"]
    finals = _final_steps(record)
    preds = {p["step"]: p for p in (record.get("prediction") or {}).get("steps", [])}
    per_step_labels: dict[int, list[str]] = {}
    for a in record["answers"]:
        for s in a["data"].get("steps", []):
            lab = s.get("label")
            per_step_labels.setdefault(s["step"], []).append(
                f"{a['user']}={'' if lab is None else ('yes' if lab else 'no')}"
            )
    for i, s in enumerate(payload["steps"]):
        fb = s.get("feedback") or {}
        f = finals.get(i) or {}
        p = preds.get(i)
        yield [
            record["id"], record["external_id"], i, payload["instruction"], s["observation"], s["action"],
            s.get("result") or "",
            "" if "productive" not in fb else ("yes" if fb["productive"] else "no"), fb.get("reason", ""),
            "" if p is None else f"{p['probability']:.4f}",
            (record.get("prediction") or {}).get("model_version", ""),
            len(record["answers"]), ";".join(per_step_labels.get(i, [])),
            "" if f.get("label") is None else ("yes" if f["label"] else "no"), f.get("method") or "",
            " | ".join(f.get("reasons", [])),
        ]


def csv_line(row: list) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(row)
    return buf.getvalue()


LFM = register(
    LFMTrajectoryKind(
        name="lfm_trajectory",
        label="LFM trajectory verification",
        payload_schema=Trajectory,
        feedback_schema=TrajectoryFeedback,
        prediction_schema=TrajectoryPrediction,
        review_template="annotation/kinds/lfm_review.html",
        import_formats={
            "jsonl": "One trajectory per line (see the Trajectory schema).",
            "rollout": 'The LFM code\'s rollouts: {"traj": [{"action", "prompt", "after": {...}}]} per line.',
        },
        export_formats={
            "lfm_steps": ExportFormat(
                name="lfm_steps",
                label="LFM step rows (JSONL)",
                extension="jsonl",
                content_type="application/x-ndjson",
                rows=lfm_step_rows,
                description="{task, step, action, before, after, label, feedback} for steps with a final label.",
                final_only=True,
                reads=frozenset({"payload", "final"}),
            ),
            "lfm_imitation": ExportFormat(
                name="lfm_imitation",
                label="Imitation-learning set (JSONL)",
                extension="jsonl",
                content_type="application/x-ndjson",
                rows=lfm_imitation_rows,
                description="{inp, out} for the steps whose final label is productive.",
                final_only=True,
                reads=frozenset({"payload", "final"}),
            ),
            "csv": ExportFormat(
                name="csv",
                label="CSV, one row per step",
                extension="csv",
                content_type="text/csv",
                rows=csv_rows,
                header=CSV_HEADER,
            ),
        },
        keyboard=[
            ("j / ↓", "next step"),
            ("k / ↑", "previous step"),
            ("a", "agree with the shown label"),
            ("d", "disagree (flip the label)"),
            ("u", "unsure"),
            ("y / n", "set the label to productive / not productive"),
            ("A", "agree with every step that has no verdict yet"),
            ("r", "edit this step's reason"),
            ("o", "edit the notes on the whole trajectory"),
            ("Esc", "leave the text field"),
            ("Ctrl+Enter", "submit and go to the next item"),
            ("s", "skip this item"),
            ("?", "show or hide this help"),
        ],
    )
)
