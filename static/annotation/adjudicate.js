// Adjudication page: keyboard-driven decisions on every step of one item.
// j/k (or the arrow keys) move between steps, y/n set the current step's final
// label, r edits its reason, Esc leaves a text field, Ctrl+Enter submits.
// Without JavaScript the form works as plain radios and a submit button.
(function () {
  const form = document.getElementById("adjudicate-form");
  if (!form) return;
  const steps = Array.from(form.querySelectorAll(".adj-step"));
  const counter = document.getElementById("undecided");
  let current = 0;

  function radios(section) {
    return Array.from(section.querySelectorAll('input[type="radio"]'));
  }
  function decided(section) {
    return radios(section).some((r) => r.checked);
  }
  function undecided() {
    return steps.filter((s) => !decided(s));
  }
  function updateCounter() {
    const left = undecided().length;
    steps.forEach((s) => s.classList.toggle("adj-undecided", !decided(s)));
    if (!counter) return;
    counter.dataset.count = String(left);
    counter.textContent = left
      ? left + " step" + (left === 1 ? "" : "s") + " without a final label."
      : "Every step has a final label.";
  }
  function focusStep(i) {
    if (!steps.length) return;
    current = Math.max(0, Math.min(steps.length - 1, i));
    steps.forEach((s, j) => {
      if (j === current) s.setAttribute("aria-current", "step");
      else s.removeAttribute("aria-current");
    });
    steps[current].focus();
  }
  function setLabel(value) {
    const section = steps[current];
    if (!section) return;
    const radio = section.querySelector('input[type="radio"][value="' + value + '"]');
    if (radio) {
      radio.checked = true;
      radio.dispatchEvent(new Event("change", { bubbles: true }));
    }
  }
  function typing(el) {
    if (!el) return false;
    const tag = el.tagName;
    return tag === "TEXTAREA" || (tag === "INPUT" && el.type !== "radio" && el.type !== "checkbox") || el.isContentEditable;
  }
  function submit() {
    const left = undecided();
    if (left.length) {
      // The server checks too; this only saves a round trip.
      focusStep(steps.indexOf(left[0]));
      if (counter) counter.textContent = "Decide every step first: " + counter.textContent;
      return;
    }
    if (typeof form.requestSubmit === "function") form.requestSubmit();
    else form.submit();
  }

  steps.forEach((section, i) => {
    section.addEventListener("focusin", () => {
      current = i;
    });
    section.addEventListener("click", () => {
      current = i;
    });
  });
  form.addEventListener("change", updateCounter);
  form.addEventListener("submit", (ev) => {
    if (undecided().length) {
      ev.preventDefault();
      submit();
    }
  });

  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
      ev.preventDefault();
      submit();
      return;
    }
    if (typing(ev.target)) {
      if (ev.key === "Escape") {
        ev.target.blur();
        focusStep(current);
      }
      return;
    }
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    // Arrow keys keep their native meaning on radios (moving between the two labels).
    if ((ev.key === "ArrowDown" || ev.key === "ArrowUp") && ev.target.type === "radio") return;
    switch (ev.key) {
      case "j":
      case "ArrowDown":
        focusStep(current + 1);
        break;
      case "k":
      case "ArrowUp":
        focusStep(current - 1);
        break;
      case "y":
        setLabel("yes");
        break;
      case "n":
        setLabel("no");
        break;
      case "r": {
        const reason = steps[current] && steps[current].querySelector(".adj-reason");
        if (reason) reason.focus();
        break;
      }
      default:
        return;
    }
    ev.preventDefault();
  });

  updateCounter();
  // Start on the first step that still needs a decision (or the first with an error).
  const firstMissing = form.querySelector(".adj-missing") || undecided()[0];
  focusStep(firstMissing ? steps.indexOf(firstMissing) : 0);
})();
