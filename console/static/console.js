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

  function ended() {
    // The session ended (logout elsewhere, its lifetime, idle, a restart): reconnecting
    // cannot help, logging in again does.
    status.dataset.live = "ended";
    status.textContent = "Session ended: ";
    const link = document.createElement("a");
    link.href = "/login";
    link.textContent = "log in again";
    status.appendChild(link);
  }

  // Why the browser gave up on the feed: it does when a reconnect is answered with
  // anything but 200, and only a 401 means the session is gone.
  function closed() {
    fetch("/api/alerts?limit=1", { credentials: "same-origin", cache: "no-store" })
      .then(function (answer) {
        if (answer.status === 401) {
          ended();
        } else {
          live(false, "Live feed stopped: reload the page.");
        }
      })
      .catch(function () {
        live(false, "Live feed stopped: reload the page.");
      });
  }

  const source = new EventSource("/api/events");
  source.addEventListener("ready", function () {
    live(true, "Live: new alerts and outcomes appear below as they happen.");
  });
  source.addEventListener("item", function (message) {
    show(JSON.parse(message.data));
  });
  source.addEventListener("error", function () {
    if (source.readyState === EventSource.CLOSED) {
      closed();
    } else {
      live(false, "Live feed interrupted: reconnecting…");
    }
  });
})();
