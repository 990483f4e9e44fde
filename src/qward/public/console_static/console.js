"use strict";
// The audit console. The token lives in sessionStorage only and travels as a bearer token.
(() => {
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);
  const token = () => sessionStorage.getItem("qward-token") || "";

  async function api(path, init = {}) {
    const headers = Object.assign({ Authorization: "Bearer " + token() }, init.headers || {});
    const response = await fetch(path, Object.assign({}, init, { headers }));
    let body = null;
    try { body = await response.json(); } catch (_) { body = null; }
    if (!response.ok) {
      const error = body && body.error;
      const message = typeof error === "string" ? error : (error && error.message) || response.statusText;
      throw new Error(response.status + ": " + message);
    }
    return body;
  }

  function show(element, value) { element.textContent = value == null ? "-" : String(value); }

  function row(cells) {
    const tr = document.createElement("tr");
    for (const cell of cells) { const td = document.createElement("td"); show(td, cell); tr.appendChild(td); }
    return tr;
  }

  function svgElement(name, attributes) {
    const element = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
    return element;
  }

  // A small line or bar chart: points are {label, y}; y may be null (no data that minute).
  function plot(svg, points, bars) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const W = 600, H = 160, P = 32;
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    const values = points.map((p) => p.y).filter((v) => v != null);
    if (!values.length) {
      const empty = svgElement("text", { x: P, y: H / 2 });
      empty.textContent = "no data yet";
      svg.appendChild(empty);
      return;
    }
    const max = Math.max(...values) || 1;
    const n = points.length;
    const x = (i) => P + (n === 1 ? (W - 2 * P) / 2 : (i * (W - 2 * P)) / (n - 1));
    const y = (v) => H - P - (v / max) * (H - 2 * P);
    svg.appendChild(svgElement("line", { class: "axis", x1: P, y1: H - P, x2: W - P, y2: H - P }));
    svg.appendChild(svgElement("line", { class: "axis", x1: P, y1: P, x2: P, y2: H - P }));
    const top = svgElement("text", { x: 2, y: P });
    top.textContent = String(Math.round(max * 100) / 100);
    svg.appendChild(top);
    const path = [];
    points.forEach((p, i) => {
      if (p.y == null) return;
      const mark = bars
        ? svgElement("rect", { class: "bar", x: x(i) - 4, y: y(p.y), width: 8, height: H - P - y(p.y) })
        : svgElement("circle", { class: "point", cx: x(i), cy: y(p.y), r: 3 });
      mark.setAttribute("data-value", String(p.y));
      const title = svgElement("title", {});
      title.textContent = `${p.label}: ${p.y}`;
      mark.appendChild(title);
      svg.appendChild(mark);
      path.push(`${x(i)},${y(p.y)}`);
    });
    if (!bars && path.length > 1) svg.insertBefore(svgElement("polyline", { class: "line", points: path.join(" ") }), svg.firstChild);
  }

  function fill(data) {
    show($("log-origin"), data.log.origin);
    show($("log-size"), data.log.size);
    show($("log-root"), data.log.root_hash);
    show($("window"), data.log.window);
    const w = data.witnesses;
    show($("witnesses"), w.required
      ? `${w.ok ? "quorum met" : "quorum NOT met"}: ${w.cosigned_by.length} of ${w.pinned.length} pinned witnesses cosigned (${w.required} required)` + (w.message ? `; ${w.message}` : "")
      : "no witnesses pinned: the checkpoint is not protected against a split view");
    const types = $("types").tBodies[0];
    types.replaceChildren(...Object.entries(data.entry_types).map(([kind, count]) => row([kind, count])));
    const runs = $("runs-table").tBodies[0];
    runs.replaceChildren(...data.runs.map((r) => row([
      r.index, r.at, r.model, r.caller,
      r.replays.length ? r.replays.map((v) => `${v.verdict} (entry ${v.index})`).join(", ") : "none",
      r.anchored_by.length ? r.anchored_by.join(", ") : "not yet",
    ])));
    const timeline = $("key-timeline");
    timeline.replaceChildren(...data.keys.map((k) => {
      const li = document.createElement("li");
      show(li, `${k.at}: ${k.action} (entry ${k.index})`);
      return li;
    }));
    plot($("plot-size"), data.series.map((s) => ({ label: s.minute, y: s.log_size })), false);
    plot($("plot-runs"), data.series.map((s) => ({ label: s.minute, y: s.runs })), true);
    plot($("plot-latency"), data.series.map((s) => ({ label: s.minute, y: s.mean_latency_seconds })), false);
  }

  async function load() {
    const status = $("status");
    status.className = "";
    show(status, "loading...");
    try {
      fill(await api("/audit/api/overview"));
      $("main").hidden = false;
      show(status, "loaded at " + new Date().toISOString());
    } catch (error) {
      $("main").hidden = true;
      status.className = "error";
      show(status, "could not load: " + error.message);
    }
  }

  async function verify() {
    const verdict = $("verdict");
    const list = $("checks");
    list.replaceChildren();
    verdict.className = "";
    show(verdict, "verifying...");
    try {
      const result = await api("/audit/api/verify-receipt", { method: "POST", body: $("receipt").value });
      for (const check of result.checks) {
        const li = document.createElement("li");
        li.className = check.ok === true ? "ok" : check.ok === false ? "fail" : "skipped";
        li.dataset.check = check.name;
        show(li, `${check.ok === true ? "pass" : check.ok === false ? "FAIL" : "not run"}: ${check.name}: ${check.message}`);
        list.appendChild(li);
      }
      const failed = result.checks.find((c) => c.ok === false);
      verdict.className = result.verified ? "ok" : "fail";
      show(verdict, result.verified ? "verified: every check passed" : `failed: ${failed ? failed.name : "a check"}`);
    } catch (error) {
      verdict.className = "fail";
      show(verdict, "failed: " + error.message);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login").addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem("qward-token", $("token").value.trim());
      $("token").value = "";
      load();
    });
    $("verify-button").addEventListener("click", verify);
    const zone = $("dropzone");
    zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", async (event) => {
      event.preventDefault();
      zone.classList.remove("over");
      const file = event.dataTransfer.files[0];
      if (file) { $("receipt").value = await file.text(); verify(); }
    });
    if (token()) load();
  });
})();
