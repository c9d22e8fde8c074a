// srpy's dashboard page: polls /api/state, draws the totals, the chart, the engines and the peer mesh,
// and asks /api/stack for a busy engine's stack when its row is clicked. Every element is built with
// DOM calls and textContent: nothing the server sends is parsed as HTML or run.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const CHART_HEIGHT = 220;
  let chart = null;
  let selected = null;         // the URI of the engine whose stack is shown
  let stackAsked = 0;          // when its stack was last asked for (ms)
  let stackPending = false;
  let lastState = null;

  function byId(id) { return document.getElementById(id); }

  function element(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  // -- formatting -------------------------------------------------------------------------------------

  function bytes(count) {
    if (!count) return "-";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let value = count, unit = 0;
    while (value >= 1000 && unit < units.length - 1) { value /= 1000; unit += 1; }
    return value.toFixed(value < 10 && unit > 0 ? 1 : 0) + " " + units[unit];
  }

  function duration(seconds) {
    if (seconds < 60) return seconds.toFixed(1) + " s";
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return minutes + " m " + String(Math.floor(seconds % 60)).padStart(2, "0") + " s";
    return Math.floor(minutes / 60) + " h " + String(minutes % 60).padStart(2, "0") + " m";
  }

  function rate(value) {
    return value >= 100 ? value.toFixed(0) : value >= 10 ? value.toFixed(1) : value.toFixed(2);
  }

  function called(name) {
    // "nap" reads as a call, "nap()"; code run by exe is "<module>", left as it is
    return name.charAt(0) === "<" ? name : name + "()";
  }

  function shortName(engine) {
    // "engine-4242@host" reads better as "engine-4242" when the host has a column of its own
    const name = engine.name || engine.uri;
    const at = name.lastIndexOf("@");
    return at > 0 && name.slice(at + 1) === engine.host ? name.slice(0, at) : name;
  }

  // -- the totals --------------------------------------------------------------------------------------

  function drawTotals(state) {
    const totals = state.totals;
    byId("total-engines").textContent = totals.answering === totals.engines
      ? String(totals.engines) : totals.answering + " of " + totals.engines;
    byId("total-busy").textContent = String(totals.busy);
    byId("total-cores").textContent = String(totals.cores);
    byId("total-tasks").textContent = String(totals.tasks);
    byId("total-rate").textContent = rate(totals.tasks_per_second);
    const connection = byId("connection");
    connection.classList.remove("lost");
    connection.textContent = state.problem
      ? "looking for engines failed: " + state.problem
      : "updated " + new Date(state.time * 1000).toLocaleTimeString();
  }

  // -- the chart ---------------------------------------------------------------------------------------

  function drawChart(state) {
    const series = state.series;
    const data = [series.time, series.tasks_per_second, series.busy];
    const box = byId("chart");
    if (chart === null) {
      chart = new uPlot({
        width: Math.max(300, box.clientWidth),
        height: CHART_HEIGHT,
        legend: { live: false },
        scales: {
          x: { time: true },
          busy: { range: function (u, low, high) { return [0, Math.max(1, high)]; } },
        },
        series: [
          {},
          { label: "tasks/s", stroke: "#1c64b4", fill: "rgba(28, 100, 180, 0.12)", width: 2 },
          { label: "busy engines", stroke: "#d9480f", width: 1.5, scale: "busy" },
        ],
        axes: [
          {},
          { label: "tasks per second" },
          { side: 1, scale: "busy", label: "busy engines", grid: { show: false } },
        ],
      }, data, box);
      window.addEventListener("resize", function () {
        chart.setSize({ width: Math.max(300, box.clientWidth), height: CHART_HEIGHT });
      });
    } else {
      chart.setData(data);
    }
  }

  // -- the engines -------------------------------------------------------------------------------------

  function stateBadge(engine) {
    const badge = element("span", engine.state, "state " + engine.state.replace(" ", "-"));
    if (engine.reason) badge.title = engine.reason;
    return badge;
  }

  function engineRow(engine) {
    const row = document.createElement("tr");
    row.dataset.uri = engine.uri;
    row.dataset.state = engine.state;
    row.title = engine.uri;
    const load = engine.load.length ? engine.load[0].toFixed(2) : "-";
    const cells = [
      [shortName(engine), "name"], [engine.host || "-"], [engine.group || "-"],
      [engine.cores || "-", "num"], [null, "state-cell"],
      [engine.state === "busy" ? called(engine.task || engine.call) : "", "task"],
      [engine.state === "busy" ? duration(engine.running_for) : "", "num for"],
      [engine.tasks, "num tasks"], [rate(engine.tasks_per_second), "num rate"],
      [load, "num"], [engine.memory_total ? bytes(engine.memory_available) + " of " + bytes(engine.memory_total) : "-", "num"],
      [bytes(engine.rss), "num"],
    ];
    for (const [text, className] of cells) {
      const cell = element("td", text, className);
      if (className === "state-cell") cell.appendChild(stateBadge(engine));
      row.appendChild(cell);
    }
    if (engine.uri === selected) row.classList.add("selected");
    if (engine.state === "busy") {
      row.tabIndex = 0;
      row.addEventListener("click", function () { select(engine.uri); });
      row.addEventListener("keydown", function (event) { if (event.key === "Enter") select(engine.uri); });
    }
    return row;
  }

  function drawEngines(state) {
    const body = document.querySelector("#engines tbody");
    const rows = state.engines.map(engineRow);
    body.replaceChildren.apply(body, rows);
    byId("no-engines").hidden = rows.length > 0;
  }

  // -- a busy engine's stack -----------------------------------------------------------------------------

  function select(uri) {
    selected = uri;
    stackAsked = 0;
    byId("stack-panel").hidden = false;
    byId("stack-title").textContent = "Stack of " + uri;
    byId("stack-text").textContent = "asking\u2026";
    if (lastState) drawEngines(lastState);
    askStack();
  }

  function askStack() {
    if (selected === null || stackPending) return;
    stackPending = true;
    stackAsked = Date.now();
    const uri = selected;
    fetch("/api/stack", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ uri: uri }),
    }).then(function (response) {
      if (response.status === 401) { window.location.assign("/login"); return null; }
      return response.json();
    }).then(function (answer) {
      if (answer === null || uri !== selected) return;
      const title = byId("stack-title"), text = byId("stack-text");
      if (answer.error) {
        text.textContent = answer.error;
      } else if (answer.busy) {
        title.textContent = (answer.name || uri) + " is running " + called(answer.task || answer.call) +
          " for " + duration(answer.running_for);
        text.textContent = answer.stack || "(no Python frames: the call is in C code)";
      } else {
        title.textContent = (answer.name || uri) + " is idle";
        text.textContent = "It runs nothing now; click a busy engine.";
      }
    }).catch(function (error) {
      byId("stack-text").textContent = "no answer: " + error;
    }).finally(function () { stackPending = false; });
  }

  // -- the peer mesh -----------------------------------------------------------------------------------

  function svg(tag, attributes, text) {
    const node = document.createElementNS(SVG, tag);
    for (const name in attributes) node.setAttribute(name, String(attributes[name]));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function drawMesh(state) {
    const engines = state.engines;
    const mesh = byId("mesh");
    const width = 400, height = 300, radius = engines.length > 1 ? 110 : 0;
    const where = new Map();
    engines.forEach(function (engine, index) {
      const angle = 2 * Math.PI * index / Math.max(1, engines.length) - Math.PI / 2;
      where.set(engine.uri, [width / 2 + radius * Math.cos(angle), height / 2 + radius * Math.sin(angle)]);
    });
    const nodes = [], seen = new Set();
    for (const engine of engines) {
      for (const peer of engine.peers) {
        const pair = [engine.uri, peer].sort().join(" ");
        if (!where.has(peer) || seen.has(pair)) continue;
        seen.add(pair);
        const [x1, y1] = where.get(engine.uri), [x2, y2] = where.get(peer);
        nodes.push(svg("line", { x1: x1, y1: y1, x2: x2, y2: y2 }));
      }
    }
    for (const engine of engines) {
      const [x, y] = where.get(engine.uri);
      const group = svg("g", {});
      group.appendChild(svg("title", {}, engine.uri + " (" + engine.state + ")"));
      group.appendChild(svg("circle", { cx: x, cy: y, r: 9, "class": engine.state.replace(" ", "-") }));
      const right = x >= width / 2;
      group.appendChild(svg("text", { x: x + (right ? 13 : -13), y: y + 4, "text-anchor": right ? "start" : "end" },
                            shortName(engine)));
      nodes.push(group);
    }
    mesh.replaceChildren.apply(mesh, nodes);
    byId("mesh-note").textContent = seen.size
      ? seen.size + " peer link" + (seen.size === 1 ? "" : "s")
      : "No peer links: engines become peers when a box introduces them (box.connectPeers()).";
  }

  // -- polling -------------------------------------------------------------------------------------------

  function draw(state) {
    lastState = state;
    drawTotals(state);
    drawChart(state);
    drawEngines(state);
    drawMesh(state);
    const shown = state.engines.find(function (engine) { return engine.uri === selected; });
    if (shown && shown.state === "busy" && Date.now() - stackAsked > 2000) askStack();
  }

  function poll() {
    let wait = 1000;
    fetch("/api/state", { credentials: "same-origin", cache: "no-store" }).then(function (response) {
      if (response.status === 401) { window.location.assign("/login"); return null; }
      if (!response.ok) throw new Error("HTTP " + response.status);
      return response.json();
    }).then(function (state) {
      if (state === null) return;
      wait = Math.max(250, state.interval * 1000);
      draw(state);
    }).catch(function (error) {
      const connection = byId("connection");
      connection.classList.add("lost");
      connection.textContent = "the dashboard does not answer (" + error.message + "); trying again";
      wait = 2000;
    }).finally(function () { window.setTimeout(poll, wait); });
  }

  poll();
})();
