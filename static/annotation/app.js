// Behaviour shared by every page. It lives here, not in on*= attributes, because the
// Content-Security-Policy forbids inline script (feedback_app/security.py).
(function () {
  // <select data-autosubmit>: submit its form as soon as the choice changes (filters).
  document.addEventListener("change", (ev) => {
    const el = ev.target;
    if (el instanceof HTMLSelectElement && el.hasAttribute("data-autosubmit") && el.form) el.form.submit();
  });
})();
