// Live dashboard: the server pushes the re-rendered stats over a websocket;
// when the socket cannot be opened (no channel layer, a proxy without
// websockets) the page polls the same fragment instead.
(function () {
  const box = document.getElementById("live-stats");
  if (!box) return;
  const status = document.getElementById("live-status");
  let pollTimer = null;
  let retries = 0;

  function setStatus(mode, text) {
    document.documentElement.dataset.live = mode;
    if (status) status.textContent = text;
  }
  function poll() {
    fetch(box.dataset.pollUrl, { credentials: "same-origin", headers: { "HX-Request": "true" } })
      .then((r) => (r.ok ? r.text() : Promise.reject(r.status)))
      .then((html) => { box.innerHTML = html; })
      .catch(() => {});
  }
  function startPolling() {
    if (pollTimer) return;
    setStatus("polling", "live updates unavailable: refreshing every 5 s");
    pollTimer = setInterval(poll, 5000);
  }
  function connect() {
    const proto = location.protocol === "https:" ? "wss://" : "ws://";
    const ws = new WebSocket(proto + location.host + box.dataset.wsPath);
    ws.onopen = () => {
      retries = 0;
      if (pollTimer) { clearInterval(pollTimer); pollTimer = null; }
      setStatus("ws", "live");
    };
    ws.onmessage = (ev) => { box.innerHTML = ev.data; };
    ws.onclose = (ev) => {
      if (ev.code === 4403) { setStatus("closed", "no access"); return; }
      startPolling();
      retries += 1;
      setTimeout(connect, Math.min(30000, 1000 * 2 ** retries));
    };
  }
  connect();
})();
