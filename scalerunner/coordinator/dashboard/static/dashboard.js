// The Scalerunner dashboard: one live stream (/api/v1/stream), drawn with DOM calls only.
// Node names, reasons and log text are always set as textContent, never parsed as HTML.

const ROW = 14; // nodes per rack row
const KEY = "scalerunner-token";
const $ = (sel) => document.querySelector(sel);

const nodes = new Map(); // name -> latest entry
const tiles = new Map(); // name -> tile element
let power = []; // {at, watts, energy_wh}
let followed = null; // the job whose log is shown

// -- the token: "#token=..." once (never sent to the server), then this tab's sessionStorage --

function takeToken() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem(KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem(KEY);
}

function showLogin(message) {
  $("#board").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
}

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(KEY)}`, ...(options.headers || {}) };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { ...options, headers, body: options.body && JSON.stringify(options.body) });
  if (res.status === 401) {
    sessionStorage.removeItem(KEY);
    showLogin("The coordinator refused the token.");
    throw new Error("unauthorised");
  }
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.error || `HTTP ${res.status}`);
  return body;
}

// -- the stream: server-sent events read with fetch (EventSource cannot send the token) --

function setLink(up, text) {
  const el = $("#link");
  el.className = `link ${up ? "up" : "down"}`;
  el.textContent = text;
}

async function follow() {
  for (;;) {
    try {
      const res = await fetch("/api/v1/stream", {
        headers: { Authorization: `Bearer ${sessionStorage.getItem(KEY)}` },
      });
      if (res.status === 401) {
        sessionStorage.removeItem(KEY);
        showLogin("The coordinator refused the token.");
        started = false;
        return;
      }
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      setLink(true, "live");
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          dispatch(frame);
        }
      }
    } catch (err) {
      console.warn("stream:", err);
    }
    setLink(false, "reconnecting");
    await new Promise((r) => setTimeout(r, 1000));
  }
}

function dispatch(frame) {
  let kind = "message";
  const data = [];
  for (const line of frame.split("\n")) {
    if (line.startsWith("event: ")) kind = line.slice(7);
    else if (line.startsWith("data: ")) data.push(line.slice(6));
  }
  if (!data.length) return; // a keepalive comment
  const payload = JSON.parse(data.join("\n"));
  if (kind === "snapshot") {
    nodes.clear();
    for (const n of payload.nodes) nodes.set(n.name, n);
    power = payload.power;
    drawRack();
    drawCharts();
    drawJobs(payload.jobs);
  } else if (kind === "node") {
    nodes.set(payload.name, payload);
    if (tiles.has(payload.name)) fillTile(tiles.get(payload.name), payload);
    else drawRack();
    drawSummary();
  } else if (kind === "power") {
    power.push(payload);
    if (power.length > 720) power.shift();
    drawCharts();
  } else if (kind === "jobs") {
    drawJobs(payload);
  }
}

// -- the rack --

function rows() {
  // Rows of ROW by the inventory's rack positions; nodes without one fill rows of their own.
  const placed = new Map();
  const loose = [];
  for (const n of nodes.values()) {
    if (n.rack) {
      if (!placed.has(n.rack.row)) placed.set(n.rack.row, []);
      placed.get(n.rack.row).push(n);
    } else loose.push(n);
  }
  const out = [...placed.keys()].sort((a, b) => a - b).map((r) => [`row ${r}`, placed.get(r)]);
  for (let i = 0; i < loose.length; i += ROW) out.push(["no rack position", loose.slice(i, i + ROW)]);
  return out;
}

function drawRack() {
  const rack = $("#rack");
  rack.replaceChildren();
  tiles.clear();
  for (const [label, members] of rows()) {
    const title = document.createElement("div");
    title.className = "row-label";
    title.textContent = label;
    const row = document.createElement("div");
    row.className = "row";
    members.forEach((n, i) => {
      const tile = $("#node-tile").content.firstElementChild.cloneNode(true);
      const col = n.rack ? ((n.rack.position - 1) % ROW) + 1 : i + 1;
      tile.style.gridColumn = String(col);
      tile.dataset.node = n.name;
      tile.querySelector(".identify").addEventListener("click", () => act(n.name, "identify"));
      tile.querySelector(".drain").addEventListener("click", () => act(n.name, "drain"));
      tile.querySelector(".cycle").addEventListener("click", () => act(n.name, "cycle"));
      fillTile(tile, n);
      tiles.set(n.name, tile);
      row.append(tile);
    });
    rack.append(title, row);
  }
  drawSummary();
}

function fmt(value, digits, unit) {
  return value === null || value === undefined ? "–" : `${value.toFixed(digits)} ${unit}`;
}

function fillTile(tile, n) {
  tile.className = `node s-${n.state}`;
  tile.dataset.state = n.state;
  tile.dataset.health = n.health;
  tile.querySelector(".name").textContent = n.name;
  tile.querySelector(".state").textContent = n.state;
  const health = tile.querySelector(".health");
  health.textContent = n.health;
  health.className = `health h-${n.health}`;
  health.title = n.health_reason ? `${n.health}: ${n.health_reason}` : n.health;
  tile.querySelector(".watts").textContent = fmt(n.watts, 1, "W");
  const t = n.telemetry;
  tile.querySelector(".load").textContent = t ? t.load1.toFixed(2) : "–";
  tile.querySelector(".temp").textContent = t ? fmt(t.temp_c, 1, "°C") : "–";
  tile.querySelector(".drain").textContent = n.state === "draining" ? "undrain" : "drain";
  const led = tile.querySelector(".led");
  const pixels = n.led ? n.led.pixels : Array(8).fill("#000000");
  tile.dataset.led = n.led ? n.led.colour : "#000000";
  led.title = n.led ? `LED: ${n.led.load_pct} % load` : "LED: dark (no agent)";
  if (led.children.length !== pixels.length) {
    led.replaceChildren(...pixels.map(() => Object.assign(document.createElement("span"), { className: "px" })));
  }
  pixels.forEach((c, i) => {
    led.children[i].style.background = c;
    led.children[i].dataset.colour = c;
  });
}

function drawSummary() {
  const all = [...nodes.values()];
  const up = all.filter((n) => ["online", "idle", "busy", "draining"].includes(n.state)).length;
  const watts = all.reduce((s, n) => s + (n.watts || 0), 0);
  $("#cluster-summary").textContent = `${all.length} nodes, ${up} up, ${watts.toFixed(1)} W`;
}

async function act(name, what) {
  const out = $("#action-result");
  const node = nodes.get(name);
  let call;
  if (what === "identify") call = [`/api/v1/nodes/${encodeURIComponent(name)}/identify`, {}];
  else if (what === "drain") {
    const verb = node && node.state === "draining" ? "undrain" : "drain";
    call = [`/api/v1/nodes/${encodeURIComponent(name)}/${verb}`, { reason: "dashboard" }];
  } else {
    if (!confirm(`Power-cycle ${name}? It loses power and reboots.`)) return;
    call = ["/api/v1/power/cycle", { nodes: [name], reason: "dashboard power-cycle" }];
  }
  out.textContent = `${name}: ${what}…`;
  try {
    const res = await api(call[0], { method: "POST", body: call[1] });
    const results = Array.isArray(res) ? res : [res];
    out.textContent = results
      .map((r) => `${r.node}: ${what} ${r.ok ? "done" : "failed"}${r.detail || r.message ? ` (${r.detail || r.message})` : ""}`)
      .join("; ");
  } catch (err) {
    out.textContent = `${name}: ${what} failed: ${err.message}`;
  }
}

// -- charts: inline SVG polylines --

function chart(svg, key, digits) {
  // The viewBox follows the drawn width, so the line spans the panel and the text is not stretched.
  const W = Math.max(200, Math.round(svg.clientWidth * (120 / Math.max(svg.clientHeight, 1))) || 400);
  const H = 120, L = 36, B = 14;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.replaceChildren();
  const ns = "http://www.w3.org/2000/svg";
  const text = (x, y, s, anchor = "end") => {
    const t = document.createElementNS(ns, "text");
    Object.entries({ x, y, class: "axis", "text-anchor": anchor }).forEach(([k, v]) => t.setAttribute(k, v));
    t.textContent = s;
    svg.append(t);
  };
  if (power.length < 1) {
    text(W / 2, H / 2, "no power samples yet", "middle");
    return;
  }
  const t0 = power[0].at, t1 = Math.max(power[power.length - 1].at, t0 + 1);
  const vmax = Math.max(...power.map((p) => p[key]), 0.001) * 1.1;
  const pts = power.map((p) => `${(L + ((p.at - t0) / (t1 - t0)) * (W - L - 4)).toFixed(1)},${(H - B - (p[key] / vmax) * (H - B - 6)).toFixed(1)}`);
  if (pts.length === 1) pts.push(pts[0].replace(/^[^,]+/, String(W - 4)));
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("class", "line");
  line.setAttribute("points", pts.join(" "));
  svg.append(line);
  text(L - 3, 10, vmax.toFixed(digits));
  text(L - 3, H - B, "0");
  text(L, H - 2, new Date(t0 * 1000).toLocaleTimeString(), "start");
  text(W - 4, H - 2, new Date(t1 * 1000).toLocaleTimeString());
  svg.dataset.points = String(power.length);
  svg.dataset.last = String(power[power.length - 1][key]);
}

addEventListener("resize", () => drawCharts());

function drawCharts() {
  chart($("#chart-power"), "watts", 0);
  chart($("#chart-energy"), "energy_wh", 3);
}

// -- jobs and a followed log --

function drawJobs(jobs) {
  $("#jobs-section").hidden = jobs === null;
  if (!jobs) return;
  const body = $("#jobs tbody");
  body.replaceChildren();
  const order = { running: 0, starting: 1, queued: 2 };
  const shown = [...jobs].sort((a, b) => (order[a.state] ?? 3) - (order[b.state] ?? 3));
  for (const j of shown) {
    const tr = document.createElement("tr");
    tr.dataset.job = j.id;
    for (const v of [j.id.slice(0, 8), j.name, j.state, j.node || "", j.project]) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.append(td);
    }
    tr.addEventListener("click", () => followLog(j.id, j.name));
    body.append(tr);
  }
  if (followed === null) {
    const running = shown.find((j) => j.state === "running");
    if (running) followLog(running.id, running.name);
  }
}

async function followLog(id, name) {
  followed = id;
  $("#log-title").textContent = `Log of ${name} (${id.slice(0, 8)})`;
  const pre = $("#log");
  pre.replaceChildren();
  let attempt = 0, seq = -1;
  while (followed === id) {
    let page;
    try {
      page = await api(`/api/v1/jobs/${encodeURIComponent(id)}/log?attempt=${attempt}&seq=${seq}&wait=10`);
    } catch (err) {
      await new Promise((r) => setTimeout(r, 2000));
      continue;
    }
    if (followed !== id) return;
    for (const c of page.chunks) {
      const span = document.createElement("span");
      if (c.stream !== "stdout") span.className = c.stream;
      span.textContent = c.stream === "gap" ? `[${c.data}]\n` : c.data;
      pre.append(span);
    }
    pre.scrollTop = pre.scrollHeight;
    [attempt, seq] = [page.next_attempt, page.next_seq];
    if (page.done) return;
  }
}

// -- start --

$("#login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(KEY, $("#token").value.trim());
  start();
});

let started = false;
function start() {
  $("#login").hidden = true;
  $("#board").hidden = false;
  if (!started) {
    started = true;
    follow();
  }
}

if (takeToken()) start();
else showLogin();
