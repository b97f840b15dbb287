// The review page, keyboard first. The page is a plain form that works without this
// script; here we add: moving between steps (j/k, arrows), verdict keys, the help
// overlay, drafts that save themselves, the count of active time, and a submit that
// cannot be sent twice. After htmx swaps in a re-rendered form (validation errors)
// everything is wired again; state that must survive (time spent) lives in this closure.
(function () {
  "use strict";

  const SAVE_DELAY_MS = 800;
  const IDLE_MS = 60000; // no key, click or scroll for this long: the reviewer is away
  const TEXT_INPUTS = new Set(["text", "search", "email", "number", "password", "url", "tel", "date", "time"]);

  let root = null; // #review (replaced by htmx after a failed submit)
  let form = null;
  let steps = [];
  let cur = 0;
  let saveTimer = null;
  let saving = false;
  let saveAgain = false;
  let changeSeq = 0;
  let savedSeq = 0;
  let submitting = false;
  let hintTimer = null;

  // --- active time -------------------------------------------------------------------
  let activeMs = 0;
  let lastTick = Date.now();
  let lastActivity = Date.now();
  function tick() {
    const now = Date.now();
    if (document.visibilityState === "visible" && now - lastActivity < IDLE_MS) activeMs += now - lastTick;
    lastTick = now;
  }
  function activity() { tick(); lastActivity = Date.now(); }
  ["keydown", "pointerdown", "pointermove", "wheel", "scroll", "input"].forEach((t) =>
    window.addEventListener(t, activity, { passive: true, capture: true }));
  document.addEventListener("visibilitychange", () => { lastTick = Date.now(); if (document.visibilityState === "visible") lastActivity = Date.now(); });
  setInterval(tick, 1000);
  function timeSpent() { tick(); return Math.round(activeMs); }

  // --- helpers -------------------------------------------------------------------------
  function $(sel, el) { return (el || document).querySelector(sel); }
  function isTyping(el) {
    if (!el || el === document.body) return false;
    if (el.isContentEditable) return true;
    const tag = el.tagName;
    if (tag === "TEXTAREA" || tag === "SELECT") return true;
    return tag === "INPUT" && TEXT_INPUTS.has((el.type || "text").toLowerCase());
  }
  function radios(step, what) { return step.querySelectorAll('input[name="step-' + step.dataset.step + "-" + what + '"]'); }
  function checkRadio(step, what, value) {
    radios(step, what).forEach((r) => { r.checked = r.value === value; });
  }
  function hint(text) {
    const el = $("#review-hint");
    if (!el) return;
    el.textContent = text;
    clearTimeout(hintTimer);
    if (text) hintTimer = setTimeout(() => { el.textContent = ""; }, 4000);
  }
  function status(text, isError) {
    const el = $("#review-saved");
    if (!el) return;
    el.textContent = text;
    el.classList.toggle("is-error", !!isError);
  }
  function csrf() {
    const input = form && form.querySelector('input[name="csrfmiddlewaretoken"]');
    return input ? input.value : "";
  }

  // --- steps -----------------------------------------------------------------------
  function setCurrent(i, opts) {
    if (!steps.length) return;
    i = Math.max(0, Math.min(steps.length - 1, i));
    const prev = steps[cur];
    if (prev) { prev.classList.remove("current"); prev.removeAttribute("aria-current"); }
    cur = i;
    const step = steps[cur];
    step.classList.add("current");
    step.setAttribute("aria-current", "step");
    if (!opts || opts.focus !== false) {
      step.focus({ preventScroll: true });
      step.scrollIntoView({ block: "nearest" });
    }
    updateProgress();
  }
  function decided(step) { return !!(step.dataset.verdict || step.dataset.label); }
  function updateProgress() {
    if (!root) return;
    const pos = root.querySelector("[data-progress-pos]");
    const done = root.querySelector("[data-progress-done]");
    if (pos) pos.textContent = String(cur + 1);
    if (done) done.textContent = String(steps.filter(decided).length);
  }
  const EFFECTIVE = { yes: "→ productive", no: "→ not productive", unsure: "→ no label (unsure)", "": "" };
  function render(step) {
    const verdict = step.dataset.verdict || "";
    const label = step.dataset.label || "";
    const shown = step.dataset.shown || "";
    let eff = label;
    if (verdict === "unsure") eff = "unsure";
    else if (verdict === "agree" && shown) eff = shown;
    else if (verdict === "disagree" && shown) eff = shown === "yes" ? "no" : "yes";
    const out = step.querySelector(".effective");
    if (out) { out.dataset.effective = eff; out.textContent = EFFECTIVE[eff]; }
    checkRadio(step, "verdict", verdict);
    checkRadio(step, "label", label);
    step.classList.remove("missing");
  }
  function apply(step, verdict, label) {
    step.dataset.verdict = verdict;
    step.dataset.label = label;
    render(step);
    changed();
  }
  // The rules of the kind (annotation/kinds/lfm.py, clean_feedback), mirrored for instant feedback.
  function setVerdict(step, verdict) {
    const shown = step.dataset.shown || "";
    const label = step.dataset.label || "";
    const n = step.dataset.step;
    if (verdict === "agree") {
      if (!shown && !label) { hint("Step " + n + " shows no label to agree with: press y or n."); return false; }
      apply(step, "agree", shown || label);
    } else if (verdict === "disagree") {
      if (!shown) {
        if (!label) { hint("Step " + n + " shows no label to disagree with: press y or n."); return false; }
        apply(step, "disagree", label);
      } else {
        apply(step, "disagree", shown === "yes" ? "no" : "yes");
      }
    } else if (verdict === "unsure") {
      apply(step, "unsure", "");
    }
    return true;
  }
  function setLabel(step, label) {
    const shown = step.dataset.shown || "";
    let verdict = step.dataset.verdict || "";
    if (shown) verdict = label ? (label === shown ? "agree" : "disagree") : "";
    else if (verdict === "unsure" || !label) verdict = "";
    apply(step, verdict, label);
  }
  function agreeAll() {
    let n = 0;
    let skipped = 0;
    steps.forEach((step) => {
      if (decided(step)) return;
      if (!step.dataset.shown) { skipped += 1; return; }
      step.dataset.verdict = "agree";
      step.dataset.label = step.dataset.shown;
      render(step);
      n += 1;
    });
    if (n) changed();
    hint("Agreed with " + n + " step" + (n === 1 ? "" : "s") +
      (skipped ? "; " + skipped + " show no label: set them with y or n." : "."));
  }

  // --- drafts ----------------------------------------------------------------------
  function autosave() { return root && root.dataset.autosave === "1"; }
  function changed() {
    changeSeq += 1;
    updateProgress();
    if (!autosave()) return;
    status("unsaved changes");
    clearTimeout(saveTimer);
    saveTimer = setTimeout(saveDraft, SAVE_DELAY_MS);
  }
  function draftBody() {
    const fd = new FormData(form);
    fd.set("time_spent_ms", String(timeSpent()));
    return fd;
  }
  function saveDraft() {
    clearTimeout(saveTimer);
    saveTimer = null;
    if (!form || !autosave() || submitting) return Promise.resolve();
    if (saving) { saveAgain = true; return Promise.resolve(); }
    saving = true;
    const seq = changeSeq;
    status("saving…");
    return fetch(root.dataset.draftUrl, {
      method: "POST",
      body: draftBody(),
      credentials: "same-origin",
      headers: { Accept: "application/json", "X-CSRFToken": csrf() },
    })
      .then((r) => r.json().catch(() => ({ ok: false, error: "server error " + r.status })))
      .then((res) => {
        if (res.ok) {
          savedSeq = Math.max(savedSeq, seq);
          const at = new Date(res.saved_at);
          const hhmm = isNaN(at) ? "" : " " + at.toTimeString().slice(0, 5);
          status(savedSeq === changeSeq ? "saved" + hhmm : "unsaved changes");
        } else {
          status("not saved: " + (res.error || "unknown error"), true);
        }
      })
      .catch(() => status("not saved: the server cannot be reached", true))
      .finally(() => {
        saving = false;
        if (saveAgain) { saveAgain = false; saveDraft(); }
      });
  }
  function unsaved() { return autosave() && changeSeq !== savedSeq; }
  window.addEventListener("pagehide", () => {
    if (form && unsaved() && !submitting && navigator.sendBeacon) navigator.sendBeacon(root.dataset.draftUrl, draftBody());
  });

  // --- submit, skip, help -------------------------------------------------------------
  function submit() {
    if (!form || submitting) return;
    const btn = $("#review-submit", form);
    if (btn && btn.disabled) return;
    form.requestSubmit(btn || undefined);
  }
  function skip() {
    const skipForm = $("#review-skip-form");
    if (!skipForm || submitting) return;
    const go = () => { submitting = true; skipForm.submit(); };
    if (unsaved()) saveDraft().then(go, go); else go();
  }
  function helpEl() { return document.getElementById("review-help"); }
  function helpOpen() { const h = helpEl(); return !!h && !h.hidden; }
  function toggleHelp(show) {
    const h = helpEl();
    if (!h) return;
    h.hidden = show === undefined ? !h.hidden : !show;
    if (!h.hidden) { const b = h.querySelector("button"); if (b) b.focus(); }
    else if (steps[cur]) steps[cur].focus({ preventScroll: true });
  }

  // Capture phase: runs before htmx serialises the form, so time_spent_ms goes along,
  // and a second submit while one is on its way never leaves the page.
  document.addEventListener("submit", (e) => {
    if (!form || e.target !== form) return;
    if (e.submitter && e.submitter.hasAttribute("data-save-draft")) return;
    if (submitting) { e.preventDefault(); e.stopImmediatePropagation(); return; }
    submitting = true;
    clearTimeout(saveTimer);
    const t = $("#review-time", form);
    if (t) t.value = String(timeSpent());
    status("submitting…");
  }, true);

  document.addEventListener("htmx:beforeSwap", (e) => {
    const code = e.detail.xhr.status;
    if ((code === 400 || code === 409) && root && e.detail.target === root) {
      e.detail.shouldSwap = true;
      e.detail.isError = false;
    }
  });
  document.addEventListener("htmx:afterRequest", (e) => {
    if (!form || e.detail.elt !== form) return;
    if (!e.detail.successful || !e.detail.xhr.getResponseHeader("HX-Redirect")) {
      submitting = false;
      if (e.detail.xhr.status >= 500 || e.detail.xhr.status === 0) status("not submitted: the server did not answer; try again", true);
    }
  });
  document.addEventListener("htmx:afterSettle", () => {
    if (document.getElementById("review") !== root) init();
  });

  // --- keys --------------------------------------------------------------------------
  document.addEventListener("keydown", (e) => {
    if (!root) return;
    const typing = isTyping(e.target);
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); submit(); return; }
    if (e.key === "Escape") {
      if (helpOpen()) { e.preventDefault(); toggleHelp(false); return; }
      if (typing) {
        // back to the current step without scrolling: leaving the notes must not jump up the page
        e.preventDefault();
        e.target.blur();
        if (steps[cur]) steps[cur].focus({ preventScroll: true });
      }
      return;
    }
    if (typing || e.ctrlKey || e.metaKey || e.altKey || e.isComposing) return;
    if (helpOpen()) { if (e.key === "?") { e.preventDefault(); toggleHelp(false); } return; }
    const onRadio = e.target && e.target.type === "radio";
    const step = steps[cur];
    let handled = true;
    switch (e.key) {
      case "j": setCurrent(cur + 1); break;
      case "k": setCurrent(cur - 1); break;
      case "ArrowDown": if (onRadio) handled = false; else setCurrent(cur + 1); break;
      case "ArrowUp": if (onRadio) handled = false; else setCurrent(cur - 1); break;
      case "a": if (step) setVerdict(step, "agree"); break;
      case "d": if (step) setVerdict(step, "disagree"); break;
      case "u": if (step) setVerdict(step, "unsure"); break;
      case "y": if (step) setLabel(step, "yes"); break;
      case "n": if (step) setLabel(step, "no"); break;
      case "A": agreeAll(); break;
      case "r": {
        const ta = step && step.querySelector("textarea");
        if (ta) { ta.focus({ preventScroll: true }); ta.scrollIntoView({ block: "nearest" }); }
        break;
      }
      case "o": {
        const notes = document.getElementById("review-notes-field");
        if (notes) { notes.focus({ preventScroll: true }); notes.scrollIntoView({ block: "nearest" }); }
        break;
      }
      case "s": skip(); break;
      case "?": toggleHelp(); break;
      default: handled = false;
    }
    if (handled) e.preventDefault();
  });

  // --- mouse and plain form use ------------------------------------------------------------
  document.addEventListener("click", (e) => {
    const t = e.target;
    if (t.closest && t.closest("[data-help-toggle]")) { toggleHelp(); return; }
    if (t.closest && t.closest("[data-save-draft]") && root && root.dataset.autosave === "1") {
      e.preventDefault();
      saveDraft();
      return;
    }
    if (t.id === "review-help") toggleHelp(false); // a click on the dimmed backdrop
  });
  document.addEventListener("focusin", (e) => {
    const step = e.target.closest && e.target.closest(".step");
    if (!step || !root || !root.contains(step)) return;
    const i = steps.indexOf(step);
    if (i >= 0 && i !== cur) setCurrent(i, { focus: false });
  });
  document.addEventListener("change", (e) => {
    const t = e.target;
    if (!form || !form.contains(t)) return;
    const step = t.closest(".step");
    if (step && t.type === "radio") {
      if (t.name.endsWith("-verdict")) {
        if (!setVerdict(step, t.value)) render(step); // not possible here: put the radios back
      } else if (t.name.endsWith("-label")) {
        setLabel(step, t.value);
      }
      return;
    }
    changed();
  });
  document.addEventListener("input", (e) => {
    if (form && e.target.tagName === "TEXTAREA" && form.contains(e.target)) changed();
  });

  // --- start ---------------------------------------------------------------------------
  function init() {
    root = document.getElementById("review");
    if (!root) return;
    form = document.getElementById("review-form");
    steps = Array.prototype.slice.call(form.querySelectorAll(".step"));
    activeMs = Math.max(activeMs, parseInt(root.dataset.timeSpentMs || "0", 10) || 0);
    submitting = false;
    const firstError = root.dataset.firstError;
    let start = 0;
    if (firstError !== undefined && firstError !== "") start = parseInt(firstError, 10);
    else {
      const open = steps.findIndex((s) => !decided(s));
      start = open >= 0 ? open : 0;
    }
    cur = Math.min(start, Math.max(steps.length - 1, 0));
    setCurrent(cur, { focus: start > 0 || !!firstError });
    if (start === 0 && !firstError && steps[0]) steps[0].focus({ preventScroll: true });
    const errors = document.getElementById("review-errors");
    if (errors) {
      const summary = errors.querySelector("strong");
      const el = $("#review-hint");
      if (el && summary) el.textContent = summary.textContent + " (listed at the top)";
      if (!firstError) errors.focus({ preventScroll: true });
    }
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
