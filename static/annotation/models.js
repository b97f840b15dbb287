// Models page: the live part is pushed over a websocket when the server's channel layer reaches the
// training worker (Redis), and polled every 2 s while a run is queued or running (a worker in another
// process without Redis cannot push). With no socket at all, it is polled every 10 s.
(function () {
  const box = document.getElementById("models-live");
  if (!box) return;
  const status = document.getElementById("models-live-status");
  let token = "";
  try { token = JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRFToken"] || ""; } catch (e) { token = ""; }
  let socketUp = false;
  let timer = null;
  let period = 0;
  let retries = 0;

  function setStatus(text) { if (status) status.textContent = text; }
  function active() { return !!box.querySelector("[data-run-active]"); }
  // HTML pushed over the socket is rendered without a request, so its forms have no CSRF field yet.
  function addTokens() {
    if (!token) return;
    box.querySelectorAll("form[method=post]").forEach((form) => {
      if (form.querySelector("input[name=csrfmiddlewaretoken]")) return;
      const input = document.createElement("input");
      input.type = "hidden";
      input.name = "csrfmiddlewaretoken";
      input.value = token;
      form.prepend(input);
    });
  }
  function schedule() {
    const want = active() ? 2000 : (socketUp ? 0 : 10000);
    if (want === period) return;
    if (timer) { clearInterval(timer); timer = null; }
    period = want;
    if (want) timer = setInterval(poll, want);
  }
  function swap(html) {
    box.innerHTML = html;
    addTokens();
    schedule();
  }
  function poll() {
    fetch(box.dataset.pollUrl, { credentials: "same-origin", headers: { "HX-Request": "true" } })
      .then((r) => (r.ok ? r.text() : Promise.reject(r.status)))
      .then(swap)
      .catch(() => {});
  }
  function connect() {
    if (!("WebSocket" in window)) { schedule(); return; }
    const proto = location.protocol === "https:" ? "wss://" : "ws://";
    const ws = new WebSocket(proto + location.host + box.dataset.wsPath);
    ws.onopen = () => { retries = 0; socketUp = true; setStatus("live"); schedule(); };
    ws.onmessage = (ev) => swap(ev.data);
    ws.onclose = (ev) => {
      socketUp = false;
      schedule();
      if (ev.code === 4403) { setStatus("no access"); return; }
      setStatus("live updates unavailable: refreshing every few seconds");
      retries += 1;
      setTimeout(connect, Math.min(30000, 1000 * 2 ** retries));
    };
  }
  schedule();
  connect();
})();
