// The operations dashboard: reads GET /health/metrics with an administrator's token and draws it
// with uPlot (vendored). The token comes from the URL fragment (#token=..., never sent to a
// server, and removed from the address bar at once) or the sign-in form, and is kept in this
// tab's sessionStorage only. Every value from the server is inserted as text, never as HTML.
// When the charts are drawn, <body data-state="ready"> and each chart's data-points say so
// (the headless-browser test reads them).
(function () {
  "use strict";

  var TOKEN_KEY = "stratus.dashboard.token";
  var body = document.body;
  var charts = [];

  function $(id) { return document.getElementById(id); }

  function setState(state, message) {
    body.dataset.state = state;
    $("status").textContent = message;
  }

  function readToken() {
    var match = location.hash.match(/(?:^#|&)token=([^&]+)/);
    if (match) {
      sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
      history.replaceState(null, "", location.pathname + location.search);
    }
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function askForToken(message) {
    $("sign-in").hidden = false;
    setState("signed-out", message);
  }

  function initialWindow() {
    var wanted = new URLSearchParams(location.search).get("window");
    var select = $("window");
    for (var i = 0; i < select.options.length; i += 1) {
      if (select.options[i].value === wanted) { select.value = wanted; }
    }
  }

  function load() {
    var token = readToken();
    if (!token) { askForToken("Sign in with an administrator's access token."); return; }
    $("sign-in").hidden = true;
    setState("loading", "Loading…");
    var url = new URL(body.dataset.metricsUrl, location.href);
    url.searchParams.set("window", $("window").value);
    fetch(url, { headers: { Authorization: "Bearer " + token }, cache: "no-store" })
      .then(function (response) {
        return response.json().then(function (data) { return [response, data]; });
      })
      .then(function (pair) {
        var response = pair[0], data = pair[1];
        if (response.status === 401) {
          sessionStorage.removeItem(TOKEN_KEY);
          askForToken("The token was refused: " + (data.detail || response.statusText));
        } else if (!response.ok) {
          setState("error", (data.title || "Error") + ": " + (data.detail || response.statusText));
        } else {
          render(data);
        }
      })
      .catch(function (error) { setState("error", "Could not load the metrics: " + error); });
  }

  function seconds(iso) { return Date.parse(iso) / 1000; }

  function usd(micros) { return "$" + (micros / 1e6).toFixed(micros < 10000 ? 4 : 2); }

  function percent(rate) { return (rate * 100).toFixed(1) + "%"; }

  function render(data) {
    var points = data.series;
    var xs = points.map(function (p) { return seconds(p.start); });
    var perMinute = 60 / data.bucket_seconds;
    var t = data.totals;
    $("total-requests").textContent = String(t.requests);
    $("total-errors").textContent = t.server_errors + " (" + percent(t.error_rate) + ")";
    $("total-tasks").textContent = String(t.tasks);
    $("total-success").textContent = t.tasks ? percent(t.tasks_succeeded / t.tasks) : "–";
    $("total-cost").textContent = usd(t.cost_micros);

    charts.forEach(function (chart) { chart.destroy(); });
    charts = [
      draw("chart-requests", xs, [
        { label: "requests/min", stroke: "#2f6fdf", fill: "rgba(47,111,223,0.12)", dense: true,
          values: points.map(function (p) { return p.requests * perMinute; }) },
      ]),
      draw("chart-latency", xs, [
        { label: "p50", stroke: "#2e9d5b", values: points.map(function (p) { return p.p50_ms; }) },
        { label: "p95", stroke: "#e0a100", values: points.map(function (p) { return p.p95_ms; }) },
        { label: "p99", stroke: "#d3412f", values: points.map(function (p) { return p.p99_ms; }) },
      ]),
      draw("chart-errors", xs, [
        { label: "5xx %", stroke: "#d3412f", fill: "rgba(211,65,47,0.12)",
          values: points.map(function (p) {
            return p.requests ? (100 * p.server_errors) / p.requests : null;
          }) },
      ]),
      draw("chart-tasks", xs, [
        { label: "succeeded", stroke: "#2e9d5b", dense: true,
          values: points.map(function (p) { return p.tasks_succeeded; }) },
        { label: "failed", stroke: "#d3412f", dense: true,
          values: points.map(function (p) { return p.tasks_failed; }) },
        { label: "other", stroke: "#8a94a6", dense: true,
          values: points.map(function (p) { return p.tasks_other; }) },
      ]),
    ];
    fillRoutes(data.routes);
    fillTasks(data.tasks);
    var when = new Date(data.start).toLocaleString() + " – " + new Date(data.end).toLocaleString();
    setState("ready", "Metrics " + when + " (" + data.computed_by + ", " +
      data.bucket_seconds / 60 + "-minute intervals)");
  }

  function draw(id, xs, lines) {
    var target = $(id);
    target.textContent = "";
    var options = {
      width: Math.max(target.clientWidth, 320),
      height: 220,
      scales: { x: { time: true } },
      // Counts (dense: a value in every interval) draw as lines; latency and error rate have
      // gaps where there was no traffic, so their values also get dots (one busy interval
      // alone would otherwise draw nothing).
      series: [{}].concat(lines.map(function (line) {
        return { label: line.label, stroke: line.stroke, fill: line.fill, width: 2, spanGaps: false,
          points: { show: !line.dense || xs.length <= 60, size: 6, fill: line.stroke } };
      })),
      axes: [{}, { size: 56 }],
    };
    var data = [xs].concat(lines.map(function (line) { return line.values; }));
    var chart = new uPlot(options, data, target);
    var drawn = 0;
    lines.forEach(function (line) {
      line.values.forEach(function (v) { if (v !== null && v !== 0) { drawn += 1; } });
    });
    target.dataset.points = String(xs.length);
    target.dataset.values = String(drawn);
    return chart;
  }

  function cell(row, text, numeric) {
    var td = document.createElement("td");
    td.textContent = text;
    if (numeric) { td.className = "num"; }
    row.appendChild(td);
  }

  function fillRoutes(routes) {
    var tbody = $("routes").querySelector("tbody");
    tbody.textContent = "";
    routes.forEach(function (r) {
      var row = tbody.insertRow();
      cell(row, r.function); cell(row, r.method); cell(row, r.route);
      cell(row, String(r.count), true); cell(row, String(r.server_errors), true);
      cell(row, String(r.client_errors), true); cell(row, percent(r.error_rate), true);
      cell(row, r.p50_ms.toFixed(1), true); cell(row, r.p95_ms.toFixed(1), true);
      cell(row, r.p99_ms.toFixed(1), true);
    });
  }

  function fillTasks(tasks) {
    var tbody = $("tasks").querySelector("tbody");
    tbody.textContent = "";
    tasks.forEach(function (s) {
      var row = tbody.insertRow();
      cell(row, s.agent_name || s.agent_id); cell(row, s.model || "–");
      cell(row, String(s.count), true); cell(row, percent(s.success_rate), true);
      cell(row, s.mean_run_ms.toFixed(1), true); cell(row, s.mean_queue_wait_ms.toFixed(1), true);
      cell(row, String(s.total_tokens), true); cell(row, usd(s.cost_micros), true);
    });
  }

  $("controls").addEventListener("submit", function (event) { event.preventDefault(); load(); });
  $("window").addEventListener("change", load);
  $("sign-out").addEventListener("click", function () {
    sessionStorage.removeItem(TOKEN_KEY);
    askForToken("Token forgotten.");
  });
  $("token-form").addEventListener("submit", function (event) {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    load();
  });
  initialWindow();
  load();
})();
