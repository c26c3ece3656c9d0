// durable-engine dashboard: live counts and rows, a banner when a workflow changes, and a
// question before every action. Hand-written, no dependencies; the pages work without it
// (the server renders everything and asks for confirmation on its own).
"use strict";

(function () {
  var POLL_MS = 2000;
  var root = document.body.getAttribute("data-root") || "";

  function getJSON(url, done) {
    var request = new XMLHttpRequest();
    request.open("GET", url);
    request.setRequestHeader("Accept", "application/json");
    request.onload = function () {
      var ok = request.status >= 200 && request.status < 300;
      done(ok ? JSON.parse(request.responseText) : null, request.status);
    };
    request.onerror = function () { done(null, 0); };
    request.send();
  }

  function setLive(state) {
    var live = document.getElementById("live");
    if (!live) { return; }
    live.hidden = false;
    live.className = "live " + state;
    live.querySelector(".live-text").textContent = state === "ok" ? "live" : "offline";
  }

  function relative(timestamp) {
    if (timestamp === null || timestamp === undefined) { return ""; }
    var delta = timestamp - Date.now() / 1000;
    var size = Math.abs(delta);
    if (size < 1) { return "now"; }
    var units = [["d", 86400], ["h", 3600], ["min", 60], ["s", 1]];
    var amount = "";
    for (var i = 0; i < units.length; i++) {
      if (size >= units[i][1]) { amount = Math.floor(size / units[i][1]) + " " + units[i][0]; break; }
    }
    return delta > 0 ? "in " + amount : amount + " ago";
  }

  function cell(text, title) {
    var td = document.createElement("td");
    td.textContent = text;
    if (title) { td.title = title; }
    return td;
  }

  function row(workflow) {
    var tr = document.createElement("tr");
    tr.setAttribute("data-id", workflow.workflow_id);
    var id = document.createElement("td");
    id.className = "id";
    var link = document.createElement("a");
    link.href = root + workflow.url;
    link.textContent = workflow.workflow_id;
    id.appendChild(link);
    tr.appendChild(id);
    tr.appendChild(cell(workflow.name));
    var state = document.createElement("td");
    var badge = document.createElement("span");
    badge.className = "badge state-" + workflow.state;
    badge.textContent = workflow.state.replace("_", " ");
    state.appendChild(badge);
    tr.appendChild(state);
    tr.appendChild(cell(relative(workflow.wake_at)));
    tr.appendChild(cell(relative(workflow.updated_at)));
    return tr;
  }

  function refreshList() {
    getJSON(root + "/api/workflows" + window.location.search, function (data) {
      if (!data) { setLive("down"); return; }
      setLive("ok");
      Object.keys(data.counts).forEach(function (state) {
        var count = document.querySelector('[data-count="' + state + '"]');
        if (count) {
          count.textContent = data.counts[state];
          count.parentNode.classList.toggle("zero", data.counts[state] === 0);
        }
      });
      var total = document.querySelector('[data-count="total"]');
      if (total) { total.textContent = data.total + (data.complete ? "" : "+"); }
      var body = document.querySelector("#workflows tbody");
      if (body) {
        var rows = document.createDocumentFragment();
        data.workflows.forEach(function (workflow) { rows.appendChild(row(workflow)); });
        body.replaceChildren(rows);
        document.getElementById("no-rows").hidden = data.workflows.length > 0;
      }
    });
  }

  function watchWorkflow(page) {
    var id = page.getAttribute("data-id");
    var url = root + "/api/workflows/" + encodeURIComponent(id);
    var seenState = page.getAttribute("data-state");
    var seenHistory = page.getAttribute("data-history");
    setInterval(function () {
      getJSON(url, function (data) {
        if (!data) { setLive("down"); return; }
        setLive("ok");
        if (data.state !== seenState || String(data.history_size) !== seenHistory) {
          var banner = document.getElementById("changed");
          banner.querySelector(".now").textContent = data.state.replace("_", " ");
          banner.hidden = false;
        }
      });
    }, POLL_MS);
  }

  // Every action asks first; only then does the form carry confirm=yes, which the server
  // requires (without it, it answers with a page that asks instead).
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.classList || !form.classList.contains("action")) { return; }
    if (!window.confirm(form.getAttribute("data-confirm"))) {
      event.preventDefault();
      return;
    }
    form.querySelector('input[name="confirm"]').value = "yes";
  });

  // Filters apply as soon as they change.
  var filters = document.getElementById("filters");
  if (filters) {
    filters.addEventListener("change", function () { filters.submit(); });
  }

  if (document.querySelector("[data-live-list]")) {
    setLive("ok");
    setInterval(refreshList, POLL_MS);
  }
  var page = document.getElementById("workflow");
  if (page) {
    setLive("ok");
    watchWorkflow(page);
  }
})();
