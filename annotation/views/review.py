"""Pages: the review queue and the review page of one item.

The page is a plain HTML form (it works without JavaScript); static/annotation/review.js
adds the keyboard, autosaved drafts and the active-time count. Everything a step row
shows is computed here once, so the template is a single flat loop even for
trajectories of a thousand steps.

review-next   GET   claim (or resume) an item and redirect to it; "queue empty" page when none is left
review-item   GET   the page; the user must hold a lease on the item or have an answer to it
review-draft  POST  autosave (JSON for scripts, a redirect back for plain forms); renews the lease
review-submit POST  store the answer, then the next item (HX-Redirect for htmx, 302 otherwise)
review-skip   POST  give the item back to the queue, then the next item
"""

import math
import re

from django.contrib import messages
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import SafeString
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRedirect

from .. import queue
from ..answers import AnswerError, latest_prediction, save_draft, submit
from ..kinds.lfm import shown_labels
from ..models import Answer, Item
from ..permissions import ANNOTATE, project_view
from .projects import page

LABEL_VALUES = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}
_STEP_FIELD = re.compile(r"^steps\.(\d+)(?:\.|$)")


# --- form <-> answer --------------------------------------------------------------


def feedback_from_form(post, n_steps: int, shown: list) -> dict:
    """The TrajectoryFeedback dict from fields step-<i>-verdict/-label/-reason and notes.

    Steps the reviewer left untouched are left out (the kind reports them as missing on
    submit). Unknown values pass through so the kind's schema names the problem."""
    steps = []
    for i in range(n_steps):
        verdict = post.get(f"step-{i}-verdict", "").strip()
        raw_label = post.get(f"step-{i}-label", "").strip()
        reason = post.get(f"step-{i}-reason", "").strip()
        if not (verdict or raw_label or reason):
            continue
        label = LABEL_VALUES.get(raw_label.lower(), raw_label) if raw_label else None
        if verdict in ("agree", "disagree") and shown[i] is not None:
            label = None  # a verdict on a shown label means that label or its opposite; the kind derives it
        steps.append({"step": i, "verdict": verdict or None, "label": label, "reason": reason})
    return {"steps": steps, "notes": post.get("notes", "").strip()}


def _yes_no(value) -> str:
    if value is True:
        return "yes"
    if value is False:
        return "no"
    return ""


# Constant strings the template prints for every step, marked safe so that rendering
# a thousand steps skips escaping them.
CHECKED = SafeString(" checked")
EMPTY = SafeString("")
EFFECTIVE_TEXT = {"yes": "→ productive", "no": "→ not productive", "unsure": "→ no label (unsure)", "": ""}
SHOWN_CLASS = {True: SafeString("good"), False: SafeString("bad"), None: EMPTY}
SHOWN_TEXT = {True: SafeString("productive"), False: SafeString("not productive"), None: EMPTY}


def _effective(verdict, label, shown) -> str:
    if verdict == "unsure":
        return "unsure"
    if verdict == "agree" and shown is not None:
        return _yes_no(shown)
    if verdict == "disagree" and shown is not None:
        return _yes_no(not shown)
    return _yes_no(label) if isinstance(label, bool) else ""


# Attributions: the words of the step the model read (before, action, after), each in a class by the
# sign and size of its weight (5 levels); the word itself is escaped, so nothing from the data reaches
# an attribute, a style or a script.
ATTR_SECTIONS = {"Before:": "before", "Action:": "action", "After:": "after"}
ATTR_MARKERS = {"Task:", "Earlier:", "Before:", "Action:", "After:", "Question:", "Answer:"}
ATTR_LEVELS = 5


def attribution_class(weight) -> str:
    try:
        w = float(weight)
    except (TypeError, ValueError):
        return ""
    if not math.isfinite(w):
        return ""
    level = min(ATTR_LEVELS, int(abs(w) * ATTR_LEVELS + 0.5))
    if level == 0:
        return ""
    return f"attr-{'p' if w > 0 else 'n'}{level}"


def attribution_html(attributions) -> SafeString:
    """The step's before / action / after words, highlighted by their attribution weight."""
    sections: list[tuple[str, list[str]]] = []
    current: list[str] | None = None
    for pair in attributions or ():
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            continue
        word, weight = str(pair[0]), pair[1]
        if word in ATTR_MARKERS:
            name = ATTR_SECTIONS.get(word)
            current = None if name is None else []
            if current is not None:
                sections.append((name, current))
            continue
        if current is None:
            continue
        cls = attribution_class(weight)
        current.append(f'<span class="{cls}">{escape(word)}</span>' if cls else escape(word))
    html = "".join(
        f'<span class="attr-sec"><span class="k">{name}</span> {" ".join(words)}</span>'
        for name, words in sections if words
    )
    return SafeString(html) if html else EMPTY


def lfm_rows(payload: dict, prediction: dict | None, given: dict, step_errors: dict, missing: set) -> list[dict]:
    """One flat dict per step with every string the template prints."""
    shown = shown_labels(payload, prediction)
    preds = {p["step"]: p for p in (prediction or {}).get("steps", [])}
    by_step = {}
    for s in given.get("steps", []):
        if isinstance(s, dict) and isinstance(s.get("step"), int):
            by_step[s["step"]] = s
    rows = []
    for i, st in enumerate(payload["steps"]):
        fb = st.get("feedback")
        p = preds.get(i)
        g = by_step.get(i, {})
        verdict = g.get("verdict") or ""
        label = g.get("label")
        label_s = _yes_no(label) if isinstance(label, bool) else ""
        if verdict in ("agree", "disagree") and shown[i] is not None:
            label_s = _yes_no(shown[i] if verdict == "agree" else not shown[i])  # what the verdict implies
        if fb is not None:
            src = fb.get("source") or "llm"
            source = src.upper() if src.lower() in ("llm", "lfm") else src
            llm_reason = fb.get("reason", "")
        elif p is not None:
            source, llm_reason = "Model", ""
        else:
            source, llm_reason = "", ""
        prob = conf = explanation = ""
        attr_html = EMPTY
        if p is not None:
            prob = f"{p['probability']:.2f}"
            conf = f"{round(100 * max(p['probability'], 1 - p['probability']))}%"
            explanation = p.get("explanation", "")
            attr_html = attribution_html(p.get("attributions"))
        cls = ""
        if i in step_errors:
            cls = " has-error"
        elif i in missing:
            cls = " missing"
        reward = st.get("reward")
        effective = _effective(verdict, label, shown[i])
        rows.append(
            {
                "i": i,
                "n": SafeString(i),  # printed a dozen times per step: skip localising and escaping
                "observation": st.get("observation", ""),
                "action": st["action"],
                "result": st.get("result"),
                "reward": "" if reward is None else f"{reward:g}",
                "shown": _yes_no(shown[i]),
                "shown_cls": SHOWN_CLASS[shown[i]],
                "shown_text": SHOWN_TEXT[shown[i]],
                "source": source,
                "llm_reason": llm_reason,
                "prob": prob,
                "conf": conf,
                "explanation": explanation,
                "attr_html": attr_html,
                "verdict": verdict,
                "label": label_s,
                "effective": effective,
                "effective_text": EFFECTIVE_TEXT[effective],
                "reason": g.get("reason") or "",
                "c_agree": CHECKED if verdict == "agree" else EMPTY,
                "c_disagree": CHECKED if verdict == "disagree" else EMPTY,
                "c_unsure": CHECKED if verdict == "unsure" else EMPTY,
                "c_yes": CHECKED if label_s == "yes" else EMPTY,
                "c_no": CHECKED if label_s == "no" else EMPTY,
                "c_none": EMPTY if label_s else CHECKED,
                "cls": cls,
                "error": step_errors.get(i, ""),
            }
        )
    return rows


# --- access ---------------------------------------------------------------------


def _item(project, item_id) -> Item:
    return get_object_or_404(Item.objects.live().select_related("payload", "project"), pk=item_id, project=project)


def _access(item, user) -> tuple[bool, Answer | None, bool]:
    """(may work on it, the user's draft or submitted answer, holds an active lease)."""
    answer = (
        Answer.objects.filter(item=item, user=user, status__in=[Answer.Status.DRAFT, Answer.Status.SUBMITTED])
        .first()
    )
    holds = queue.holds(item, user)
    return (holds or answer is not None), answer, holds


def _to_next(request, project):
    """To the reviewer's next item, claimed here: straight to its page, one request less per answer than
    going through review-next, which is where an empty queue still goes."""
    item = queue.next_item(project, request.user)
    url = (reverse("review-item", args=[project.pk, item.pk]) if item is not None
           else reverse("review-next", args=[project.pk]))
    if request.htmx:
        return HttpResponseClientRedirect(url)
    return redirect(url)


def _lost(request, project):
    messages.warning(request, "You no longer hold that item (it went back to the queue). Here is your next one.")
    return _to_next(request, project)


# --- views ------------------------------------------------------------------------


@require_GET
@project_view(ANNOTATE)
def review_next(request, project):
    item = queue.next_item(project, request.user)
    if item is None:
        done = Answer.objects.filter(item__project=project, user=request.user, status=Answer.Status.SUBMITTED).count()
        return page(request, "annotation/review_empty.html", project, done=done)
    return redirect("review-item", project.pk, item.pk)


def _render(request, project, item, *, answer=None, data=None, error=None, status=200, holds=True):
    """The review page for `item`, filled from `data` (what was just posted) or the stored answer."""
    kind = project.kind_spec
    prediction = latest_prediction(item)
    pred_data = prediction.data if prediction else None
    payload = item.payload.data
    given = data if data is not None else (answer.data if answer is not None else {})
    step_errors: dict[int, str] = {}
    missing: set[int] = set()
    error_lines: list[dict] = []
    if error is not None:
        sent = given.get("steps", [])
        for e in error.errors or [{"field": "", "message": error.message}]:
            field, message = e.get("field", ""), e.get("message", "")
            m = _STEP_FIELD.match(field)
            if m and int(m.group(1)) < len(payload["steps"]):
                step = int(m.group(1))  # the kind names errors by step number
                step_errors.setdefault(step, message)
                error_lines.append({"step": step, "message": message})
            else:
                error_lines.append({"step": None, "message": message, "field": field})
                if field == "steps":
                    answered = {s.get("step") for s in sent if s.get("verdict") or s.get("label") is not None}
                    missing = set(range(len(payload["steps"]))) - answered
    rows = lfm_rows(payload, pred_data, given, step_errors, missing)
    decided = sum(1 for r in rows if r["verdict"] or r["label"])
    first_error = min(step_errors) if step_errors else (min(missing) if missing else "")
    submitted = answer is not None and answer.status == Answer.Status.SUBMITTED
    context = {
        "item": item,
        "payload": payload,
        "prediction": prediction,
        "rows": rows,
        "n_steps": len(rows),
        "decided": decided,
        "notes": given.get("notes", ""),
        "answer": answer,
        "submitted": submitted,
        "holds": holds,
        "error": error,
        "error_lines": error_lines,
        "first_error": first_error,
        "time_spent_ms": answer.time_spent_ms if answer is not None else 0,
        "kind": kind,
        "keyboard": kind.keyboard,
    }
    template = "annotation/_review_body.html" if request.htmx else "annotation/review.html"
    response = page(request, template, project, **context)
    response.status_code = status
    return response


@require_GET
@project_view(ANNOTATE)
def review_item(request, project, item_id):
    item = _item(project, item_id)
    allowed, answer, holds = _access(item, request.user)
    if not allowed:
        return _lost(request, project)
    if holds:
        queue.renew(item, request.user)
    return _render(request, project, item, answer=answer, holds=holds)


def _wants_json(request) -> bool:
    return "application/json" in request.headers.get("Accept", "")


@require_POST
@project_view(ANNOTATE)
def review_draft(request, project, item_id):
    item = _item(project, item_id)
    allowed, answer, _ = _access(item, request.user)
    if not allowed:
        if _wants_json(request):
            return JsonResponse({"ok": False, "error": "You no longer hold this item; reload the page."}, status=409)
        return _lost(request, project)
    shown = shown_labels(item.payload.data, (p.data if (p := latest_prediction(item)) else None))
    data = feedback_from_form(request.POST, len(item.payload.data["steps"]), shown)
    try:
        saved = save_draft(item, request.user, data, request.POST.get("time_spent_ms"))
    except AnswerError as exc:
        if _wants_json(request):
            return JsonResponse({"ok": False, "error": exc.message, "errors": exc.errors}, status=exc.status)
        return _render(request, project, item, answer=answer, data=data, error=exc, status=exc.status,
                       holds=queue.holds(item, request.user))
    if _wants_json(request):
        return JsonResponse({"ok": True, "saved_at": timezone.localtime(saved.updated_at).isoformat()})
    messages.success(request, "Draft saved.")
    return redirect("review-item", project.pk, item.pk)


@require_POST
@project_view(ANNOTATE)
def review_submit(request, project, item_id):
    item = _item(project, item_id)
    allowed, answer, holds = _access(item, request.user)
    if not allowed:
        return _lost(request, project)
    shown = shown_labels(item.payload.data, (p.data if (p := latest_prediction(item)) else None))
    data = feedback_from_form(request.POST, len(item.payload.data["steps"]), shown)
    try:
        result = submit(item, request.user, data, request.POST.get("time_spent_ms"))
    except AnswerError as exc:
        return _render(request, project, item, answer=answer, data=data, error=exc, status=exc.status, holds=holds)
    name = item.external_id or f"item {item.pk}"
    if result.created:
        messages.success(request, f"Submitted {name}.")
    else:
        messages.info(request, f"Your answer to {name} is stored.")
    return _to_next(request, project)


@require_POST
@project_view(ANNOTATE)
def review_skip(request, project, item_id):
    item = _item(project, item_id)
    queue.skip(item, request.user)
    messages.info(request, f"Skipped {item.external_id or f'item {item.pk}'}; it comes back when nothing else is left.")
    return _to_next(request, project)


urlpatterns = [
    path("projects/<int:project_id>/review/", review_next, name="review-next"),
    path("projects/<int:project_id>/review/<int:item_id>/", review_item, name="review-item"),
    path("projects/<int:project_id>/review/<int:item_id>/draft/", review_draft, name="review-draft"),
    path("projects/<int:project_id>/review/<int:item_id>/submit/", review_submit, name="review-submit"),
    path("projects/<int:project_id>/review/<int:item_id>/skip/", review_skip, name="review-skip"),
]
