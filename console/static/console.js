// The live feed: one EventSource on /api/events (the session cookie authorizes it).
// Without this script every page still works; it only adds rows as they happen.
"use strict";

(function () {
  const table = document.getElementById("live");
  const status = document.getElementById("live-status");
  if (!table || !status || !window.EventSource) {
    return;
  }
  const body = table.tBodies[0];
  const MAX_ROWS = 200;

  function cell(row, text) {
    const td = row.insertCell();
    td.textContent = text;
    return td;
  }

  function show(item) {
    const row = body.insertRow(0);
    row.dataset.kind = item.kind;
    if (item.alert_id) {
      row.dataset.alert = item.alert_id;
    }
    cell(row, new Date(item.at).toLocaleTimeString());
    const kind = cell(row, "");
    const badge = document.createElement("span");
    badge.className = "badge " + item.kind;
    badge.textContent = item.kind;
    kind.appendChild(badge);
    cell(row, item.account);
    cell(row, item.symbol || "");
    const alert = cell(row, "");
    if (item.alert_id) {
      const link = document.createElement("a");
      link.href = "/alerts/" + encodeURIComponent(item.account) + "/" + encodeURIComponent(item.alert_id);
      link.textContent = item.alert_id;
      alert.appendChild(link);
    }
    cell(row, item.detail);
    while (body.rows.length > MAX_ROWS) {
      body.deleteRow(body.rows.length - 1);
    }
  }

  function live(on, text) {
    status.dataset.live = on ? "on" : "off";
    status.textContent = text;
  }

  const source = new EventSource("/api/events");
  source.addEventListener("ready", function () {
    live(true, "Live: new alerts and outcomes appear below as they happen.");
  });
  source.addEventListener("item", function (message) {
    show(JSON.parse(message.data));
  });
  source.addEventListener("error", function () {
    live(false, "Live feed interrupted: reconnecting…");
  });
})();
