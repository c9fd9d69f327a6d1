// spt-stream live view: one WebSocket per selected run, rows appended as they arrive, the plots
// redrawn at most 10 times a second from what is in memory. BSD-3-Clause (spt-stream).
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const BASE = location.pathname.replace(/[^/]*$/, "");
  const REDRAW_MS = 100; // at most ~10 redraws per second, whatever the frame rate
  const SPECTRA_KEEP = 1000; // spectra kept for the heat map (the server sends as many)
  const MAX_RETRY_MS = 2000;
  const POTENTIAL_KEYS = ["potential", "cell_potential", "voltage", "ewe", "Ewe", "E_we"];
  const CURRENT_KEYS = ["current", "cell_current", "I", "i_we"];
  const VIRIDIS = ["440154", "481a6c", "472f7d", "414487", "39568c", "31688e", "2a788e", "23888e",
    "1f988b", "22a884", "35b779", "54c568", "7ad151", "a5db36", "d2e21b", "fde725"]
    .map((h) => [0, 2, 4].map((i) => parseInt(h.slice(i, i + 2), 16)));

  const S = {
    runId: null, ws: null, retryMs: 500, schema: null, vars: {}, energy: null, specName: null,
    seq: [], time: [], cols: {}, seen: new Set(), nextRow: 0, lastSeq: null,
    spectra: [], // {row, seq, t, v: Float32Array}
    duplicates: 0, gaps: 0, resets: 0, redraws: 0, connects: 0, messages: 0,
    dirty: false, runStatus: null, engine: null, heatRows: 0, heatFull: true, vmax: 0,
    plots: {}, plotKeys: {},
  };
  window.sptView = {
    state: S,
    stats: () => ({
      runId: S.runId, rows: S.seq.length, lastSeq: S.lastSeq, duplicates: S.duplicates,
      gaps: S.gaps, resets: S.resets, redraws: S.redraws, connects: S.connects,
      spectra: S.spectra.length, heatRows: S.heatRows, runStatus: S.runStatus,
      connected: !!(S.ws && S.ws.readyState === 1),
      descriptor: $("descriptor").value, variables: Object.keys(S.vars),
    }),
  };

  // ------------------------------------------------------------------ data
  function clearData() {
    S.seq = []; S.time = []; S.cols = {}; S.seen = new Set(); S.nextRow = 0; S.lastSeq = null;
    S.spectra = []; S.heatRows = 0; S.heatFull = true; S.vmax = 0; S.dirty = true;
  }

  function onSchema(msg) {
    S.schema = msg;
    S.vars = {};
    for (const v of msg.variables) S.vars[v.name] = v;
    const spec = msg.variables.find((v) => v.role === "spectrum" && v.name === "norm") ||
      msg.variables.find((v) => v.role === "spectrum");
    S.specName = spec ? spec.name : null;
    S.energy = spec && msg.coords[spec.dim] ? msg.coords[spec.dim] : null;
    const run = msg.run || {};
    const from = run.source === "tiled" ? " (Tiled)" : "";
    $("run-title").textContent = `${(run.run_uid || S.runId).slice(0, 8)} ${run.element || "?"} ${run.edge || ""}${from}`;
    S.source = run.source || "zarr";
    $("python").textContent = run.python || "";
    S.runStatus = run.status;
    fillSelects();
    S.dirty = true; S.heatFull = true;
  }

  function onRows(msg) {
    if (msg.first_row > S.nextRow) S.gaps += 1; // never expected: the server resumes exactly
    const accepted = new Set();
    const names = Object.keys(msg.columns);
    for (let i = 0; i < msg.seq_num.length; i++) {
      const seq = msg.seq_num[i];
      if (S.seen.has(seq)) { S.duplicates += 1; continue; }
      S.seen.add(seq);
      accepted.add(msg.first_row + i);
      const n = S.seq.length;
      S.seq.push(seq);
      S.time.push(msg.time[i]);
      for (const name of names) {
        let col = S.cols[name];
        if (!col) { col = S.cols[name] = new Array(n).fill(null); }
        col.push(msg.columns[name][i]);
      }
      for (const name in S.cols) if (S.cols[name].length < n + 1) S.cols[name].push(null);
    }
    const rows = S.specName && msg.spectra ? msg.spectra[S.specName] : null;
    if (rows) {
      for (let k = 0; k < rows.length; k++) {
        const row = msg.spectra_first_row + k;
        if (!accepted.has(row)) continue;
        const i = row - msg.first_row;
        S.spectra.push({ row, seq: msg.seq_num[i], t: msg.time[i],
          v: Float32Array.from(rows[k], (x) => (x === null ? NaN : x)) });
      }
      if (S.spectra.length > SPECTRA_KEEP) {
        S.spectra.splice(0, S.spectra.length - SPECTRA_KEEP);
        S.heatFull = true;
      }
    }
    S.nextRow = Math.max(S.nextRow, msg.first_row + msg.seq_num.length);
    if (S.seq.length) S.lastSeq = S.seq[S.seq.length - 1];
    S.dirty = true;
  }

  function onMessage(msg) {
    S.messages += 1;
    if (msg.type === "schema") onSchema(msg);
    else if (msg.type === "rows") onRows(msg);
    else if (msg.type === "reset") { S.resets += 1; clearData(); }
    else if (msg.type === "status") { S.runStatus = msg.status; S.dirty = true; refreshRuns(); }
    else if (msg.type === "engine") { S.engine = msg.status; S.dirty = true; }
    else if (msg.type === "error") { $("run-title").textContent = msg.error; }
  }

  // ------------------------------------------------------------------ connection
  function setConn(cls, text) {
    const el = $("conn");
    el.className = `conn ${cls}`;
    el.textContent = text;
  }

  function connect() {
    if (!S.runId) return;
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    let url = `${proto}//${location.host}${BASE}ws/runs/${encodeURIComponent(S.runId)}`;
    if (S.lastSeq !== null) url += `?after_seq=${S.lastSeq}`;
    const ws = new WebSocket(url);
    const run = S.runId;
    S.ws = ws;
    setConn("wait", "connecting");
    ws.onopen = () => { if (S.ws === ws) { S.connects += 1; S.retryMs = 500; setConn("up", "live"); } };
    ws.onmessage = (ev) => { if (S.ws === ws) onMessage(JSON.parse(ev.data)); };
    ws.onclose = () => {
      if (S.ws !== ws) return;
      S.ws = null;
      setConn("down", "reconnecting");
      setTimeout(() => { if (S.runId === run && !S.ws) connect(); }, S.retryMs);
      S.retryMs = Math.min(S.retryMs * 2, MAX_RETRY_MS);
    };
  }

  function selectRun(uid) {
    if (uid === S.runId) return;
    if (S.ws) { const old = S.ws; S.ws = null; old.close(); }
    S.runId = uid;
    S.schema = null; S.vars = {};
    clearData();
    history.replaceState(null, "", `${location.search}#run=${encodeURIComponent(uid)}`);
    highlightRun();
    connect();
  }

  // ------------------------------------------------------------------ run list
  let runsCache = [];
  function fmtTime(t) {
    return t ? new Date(t * 1000).toLocaleString([], { hour12: false }) : "";
  }
  function highlightRun() {
    for (const tr of document.querySelectorAll("#runs tbody tr")) {
      tr.classList.toggle("sel", tr.dataset.uid === S.runId);
    }
  }
  async function refreshRuns() {
    let j;
    try {
      const r = await fetch(`${BASE}api/runs`, { cache: "no-store" });
      if (!r.ok) return;
      j = await r.json();
    } catch (e) { return; }
    runsCache = j.runs;
    $("root").textContent = `trace root: ${j.root}`;
    const tiled = $("tiled");
    tiled.textContent = j.tiled ? (j.tiled.error ? `Tiled: ${j.tiled.error}` : `Tiled: ${j.tiled.url}`) : "";
    tiled.classList.toggle("err", !!(j.tiled && j.tiled.error));
    const body = document.querySelector("#runs tbody");
    body.textContent = "";
    for (const run of j.runs) {
      const tr = document.createElement("tr");
      const id = run.id || run.run_uid;
      tr.dataset.uid = id;
      tr.dataset.source = run.source || "zarr";
      if (run.live) tr.classList.add("live");
      for (const text of [run.run_uid.slice(0, 8), run.element || "?", run.live ? "live" : run.status,
        String(run.n_rows), fmtTime(run.start_time)]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      }
      if (run.source === "tiled") {
        const tag = document.createElement("span");
        tag.className = "src";
        tag.textContent = "tiled";
        tr.firstChild.appendChild(tag);
      }
      tr.title = `${run.run_uid} (${run.source === "tiled" ? "Tiled" : "Zarr"})`;
      tr.onclick = () => selectRun(id);
      body.appendChild(tr);
    }
    highlightRun();
    if (!S.runId) {
      const want = new URLSearchParams(location.hash.slice(1)).get("run");
      const pick = want || (j.runs[0] && (j.runs[0].id || j.runs[0].run_uid));
      if (pick) selectRun(pick);
    }
  }

  // ------------------------------------------------------------------ selects
  function setOptions(sel, names, keep, fallback, allowNone) {
    const prev = sel.value || keep;
    sel.textContent = "";
    if (allowNone) sel.appendChild(new Option("(none)", ""));
    for (const n of names) sel.appendChild(new Option(labelOf(n), n));
    const pick = names.includes(prev) ? prev : fallback;
    sel.value = pick || "";
  }
  function labelOf(name) {
    const v = S.vars[name];
    return v && v.units ? `${name} (${v.units})` : name;
  }
  function namesWith(role) {
    return Object.values(S.vars).filter((v) => v.role === role && !v.dim).map((v) => v.name);
  }
  function fillSelects() {
    const desc = namesWith("descriptor");
    const others = [...namesWith("process"), ...namesWith("quality")];
    const descriptorDefault = desc.includes("os") ? "os" : desc[0] || others[0];
    setOptions($("descriptor"), [...desc, ...others], null, descriptorDefault, false);
    const pvs = namesWith("process");
    const pvAll = [...pvs, ...namesWith("quality")];
    const pot = POTENTIAL_KEYS.find((k) => pvs.includes(k)) || pvs[0];
    const cur = CURRENT_KEYS.find((k) => pvs.includes(k));
    setOptions($("pv1"), pvAll, null, pot, false);
    setOptions($("pv2"), pvAll, null, cur || "", true);
    setOptions($("xvar"), pvAll, null, pot, false);
  }
  for (const id of ["descriptor", "pv1", "pv2", "xvar", "nprev"]) {
    $(id).addEventListener("change", () => { S.dirty = true; });
  }

  // ------------------------------------------------------------------ plots
  function col(name) { return (name && S.cols[name]) || new Array(S.seq.length).fill(null); }
  function widthOf(el) { return Math.max(200, el.clientWidth - 4); }

  function ensurePlot(key, el, signature, make) {
    if (S.plotKeys[key] !== signature || !S.plots[key]) {
      if (S.plots[key]) S.plots[key].destroy();
      el.textContent = "";
      S.plots[key] = make();
      S.plotKeys[key] = signature;
    }
    const p = S.plots[key];
    const w = widthOf(el);
    if (Math.abs(p.width - w) > 2) p.setSize({ width: w, height: p.height });
    return p;
  }

  const hidden = { stroke: "rgba(0,0,0,0)", width: 0, points: { show: false } };

  function drawDescriptor() {
    const d = $("descriptor").value;
    const el = $("plot-desc");
    const v = col(d), s = S.cols[`${d}_std`] || null;
    const n = S.seq.length;
    const u1 = new Array(n), l1 = new Array(n), u2 = new Array(n), l2 = new Array(n);
    const ood = new Array(n), flag = new Array(n);
    const oodCol = S.cols.ood || [], flagCol = S.cols.flags || [], valid = S.cols.valid || [];
    for (let i = 0; i < n; i++) {
      const y = v[i], e = s ? s[i] : null;
      const ok = y !== null && e !== null;
      u1[i] = ok ? y + e : null; l1[i] = ok ? y - e : null;
      u2[i] = ok ? y + 2 * e : null; l2[i] = ok ? y - 2 * e : null;
      ood[i] = oodCol[i] || valid[i] === false ? y : null;
      flag[i] = flagCol[i] ? y : null;
    }
    const p = ensurePlot("desc", el, `${d}`, () => new uPlot({
      width: widthOf(el), height: 260,
      cursor: { sync: { key: "spt-time" } },
      scales: { x: { time: true } },
      series: [
        {},
        { ...hidden, label: "+2 std" }, { ...hidden, label: "-2 std" },
        { ...hidden, label: "+1 std" }, { ...hidden, label: "-1 std" },
        { label: labelOf(d), stroke: "#1f77b4", width: 1.5, points: { show: false } },
        { label: "OOD", stroke: "#d62728", paths: () => null, points: { show: true, size: 7, fill: "#d62728" } },
        { label: "flagged", stroke: "#ff9800", paths: () => null, points: { show: true, size: 6, fill: "#ff9800" } },
      ],
      bands: [
        { series: [1, 2], fill: "rgba(31,119,180,0.15)" },
        { series: [3, 4], fill: "rgba(31,119,180,0.35)" },
      ],
      axes: [{}, { label: labelOf(d) }],
    }, [S.time, u2, l2, u1, l1, v, ood, flag], el));
    p.setData([S.time, u2, l2, u1, l1, v, ood, flag]);
    const rows = p.root.querySelectorAll(".u-legend .u-series");
    for (let i = 1; i <= 4 && i < rows.length; i++) rows[i].style.display = "none"; // band edges
  }

  function drawProcess() {
    const a = $("pv1").value, b = $("pv2").value;
    const el = $("plot-pv");
    const series = [{}, { label: labelOf(a), stroke: "#d62728", width: 1.2, scale: "y", points: { show: false } }];
    const axes = [{}, { label: labelOf(a), scale: "y", stroke: "#d62728" }];
    const data = [S.time, col(a)];
    if (b) {
      series.push({ label: labelOf(b), stroke: "#2ca02c", width: 1.2, scale: "y2", points: { show: false } });
      axes.push({ label: labelOf(b), scale: "y2", side: 1, stroke: "#2ca02c", grid: { show: false } });
      data.push(col(b));
    }
    const p = ensurePlot("pv", el, `${a}|${b}`, () => new uPlot({
      width: widthOf(el), height: 200, cursor: { sync: { key: "spt-time" } },
      scales: { x: { time: true } }, series, axes,
    }, data, el));
    p.setData(data);
  }

  function drawSpectra() {
    const el = $("plot-spec");
    if (!S.energy) { el.textContent = noSpectra(); S.plots.spec = null; S.plotKeys.spec = null; return; }
    const nPrev = Math.max(0, Math.min(30, parseInt($("nprev").value, 10) || 0));
    const series = [{ label: "E - E0 (eV)" }];
    for (let k = nPrev; k >= 1; k--) {
      const alpha = 0.08 + 0.5 * (1 - (k - 1) / Math.max(nPrev, 1));
      series.push({ label: `-${k}`, stroke: `rgba(31,119,180,${alpha.toFixed(2)})`, width: 1, points: { show: false } });
    }
    series.push({ label: "latest", stroke: "#d62728", width: 2.2, points: { show: false } });
    const data = [S.energy];
    const m = S.spectra.length;
    for (let k = nPrev; k >= 0; k--) {
      const s = S.spectra[m - 1 - k];
      data.push(s ? Array.from(s.v, (x) => (Number.isFinite(x) ? x : null)) : S.energy.map(() => null));
    }
    const p = ensurePlot("spec", el, `${nPrev}|${S.energy.length}`, () => new uPlot({
      width: widthOf(el), height: 280, legend: { show: false },
      scales: { x: { time: false } }, series,
      axes: [{ label: "energy - E0 (eV)" }, { label: "normalized \u03bc(E)" }],
    }, data, el));
    p.setData(data);
  }

  function viridis(f) {
    const x = Math.max(0, Math.min(1, f)) * (VIRIDIS.length - 1);
    const i = Math.min(VIRIDIS.length - 2, Math.floor(x)), t = x - i;
    const a = VIRIDIS[i], b = VIRIDIS[i + 1];
    return [a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t];
  }

  function fitCanvas(cv, height) {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.round(cv.clientWidth * dpr), h = Math.round(height * dpr);
    if (cv.width !== w || cv.height !== h) { cv.width = w; cv.height = h; }
    cv.style.height = `${height}px`;
    const ctx = cv.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    return [ctx, cv.clientWidth, height];
  }

  function ticks(lo, hi, n) {
    if (!(hi > lo)) return [lo];
    const step0 = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(step0)));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= step0) || step0;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9 * step; v += step) out.push(+v.toPrecision(12));
    return out;
  }

  function drawAxes(ctx, box, xr, yr, xlabel, ylabel, yfmt) {
    ctx.strokeStyle = "#999"; ctx.fillStyle = "#333"; ctx.font = "11px system-ui, sans-serif";
    ctx.strokeRect(box.x, box.y, box.w, box.h);
    ctx.textAlign = "center"; ctx.textBaseline = "top";
    for (const t of ticks(xr[0], xr[1], 6)) {
      const px = box.x + ((t - xr[0]) / (xr[1] - xr[0] || 1)) * box.w;
      ctx.fillText(String(t), px, box.y + box.h + 3);
      ctx.beginPath(); ctx.moveTo(px, box.y + box.h); ctx.lineTo(px, box.y + box.h + 3); ctx.stroke();
    }
    ctx.fillText(xlabel, box.x + box.w / 2, box.y + box.h + 16);
    ctx.textAlign = "right"; ctx.textBaseline = "middle";
    if (yr) {
      for (const t of ticks(yr[0], yr[1], 5)) {
        const py = box.y + box.h - ((t - yr[0]) / (yr[1] - yr[0] || 1)) * box.h;
        ctx.fillText(yfmt ? yfmt(t) : String(t), box.x - 4, py);
      }
    }
    ctx.save(); ctx.translate(12, box.y + box.h / 2); ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "center"; ctx.fillText(ylabel, 0, 0); ctx.restore();
  }

  function range(values) {
    let lo = Infinity, hi = -Infinity;
    for (const v of values) if (v !== null && Number.isFinite(v)) { if (v < lo) lo = v; if (v > hi) hi = v; }
    if (lo === Infinity) return null;
    if (lo === hi) { lo -= 0.5; hi += 0.5; }
    const pad = (hi - lo) * 0.05;
    return [lo - pad, hi + pad];
  }

  function drawScatter() {
    const cv = $("scatter");
    const [ctx, W, H] = fitCanvas(cv, 300);
    ctx.clearRect(0, 0, W, H);
    const xs = col($("xvar").value), ys = col($("descriptor").value);
    const box = { x: 60, y: 8, w: W - 72, h: H - 44 };
    const xr = range(xs), yr = range(ys);
    if (!xr || !yr) { drawAxes(ctx, box, [0, 1], null, labelOf($("xvar").value), labelOf($("descriptor").value)); return; }
    drawAxes(ctx, box, xr, yr, labelOf($("xvar").value), labelOf($("descriptor").value), (t) => t.toFixed(2));
    const n = xs.length;
    const px = (x) => box.x + ((x - xr[0]) / (xr[1] - xr[0])) * box.w;
    const py = (y) => box.y + box.h - ((y - yr[0]) / (yr[1] - yr[0])) * box.h;
    for (let i = 0; i < n; i++) {
      if (xs[i] === null || ys[i] === null) continue;
      const [r, g, b] = viridis(n > 1 ? i / (n - 1) : 1);
      ctx.fillStyle = `rgb(${r | 0},${g | 0},${b | 0})`;
      ctx.fillRect(px(xs[i]) - 1.5, py(ys[i]) - 1.5, 3, 3);
    }
    const last = n - 1;
    if (last >= 0 && xs[last] !== null && ys[last] !== null) {
      ctx.strokeStyle = "#d62728"; ctx.lineWidth = 2;
      ctx.beginPath(); ctx.arc(px(xs[last]), py(ys[last]), 5, 0, 2 * Math.PI); ctx.stroke();
      ctx.lineWidth = 1;
    }
  }

  function noSpectra() {
    return S.source === "tiled" ? "Tiled traces hold no spectra (the run's Zarr trace has them)"
      : "this trace stores no spectra";
  }

  const heat = document.createElement("canvas");
  function drawHeatmap() {
    const cv = $("heatmap");
    const [ctx, W, H] = fitCanvas(cv, 300);
    ctx.clearRect(0, 0, W, H);
    const box = { x: 60, y: 8, w: W - 140, h: H - 44 };
    const E = S.energy, m = S.spectra.length;
    if (!E || !m) {
      drawAxes(ctx, box, E ? [E[0], E[E.length - 1]] : [0, 1], null, "energy - E0 (eV)", "time");
      $("heat-note").textContent = E ? "" : `(${noSpectra()})`;
      return;
    }
    let vmax = S.vmax;
    for (let k = S.heatFull ? 0 : S.heatRows; k < m; k++) {
      for (const x of S.spectra[k].v) if (x > vmax) vmax = x;
    }
    if (vmax > S.vmax * 1.05 || !S.vmax) { S.vmax = vmax * 1.02; S.heatFull = true; }
    const nE = E.length;
    if (S.heatFull || heat.width !== nE || heat.height < m) {
      heat.width = nE; heat.height = Math.max(m, 16); S.heatRows = 0; S.heatFull = false;
    }
    const hctx = heat.getContext("2d");
    if (S.heatRows < m) {
      const img = hctx.createImageData(nE, m - S.heatRows);
      for (let k = S.heatRows; k < m; k++) {
        const v = S.spectra[k].v, base = (k - S.heatRows) * nE * 4;
        for (let j = 0; j < nE; j++) {
          const [r, g, b] = Number.isFinite(v[j]) ? viridis(v[j] / S.vmax) : [255, 255, 255];
          img.data[base + 4 * j] = r; img.data[base + 4 * j + 1] = g;
          img.data[base + 4 * j + 2] = b; img.data[base + 4 * j + 3] = 255;
        }
      }
      hctx.putImageData(img, 0, S.heatRows);
      S.heatRows = m;
    }
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(heat, 0, 0, nE, m, box.x, box.y, box.w, box.h);
    const t0 = S.spectra[0].t, t1 = S.spectra[m - 1].t;
    const fmt = (t) => new Date(t * 1000).toLocaleTimeString([], { hour12: false });
    drawAxes(ctx, box, [E[0], E[nE - 1]], null, "energy - E0 (eV)", "time \u2193");
    ctx.textAlign = "right"; ctx.textBaseline = "top"; ctx.fillText(fmt(t0), box.x - 4, box.y);
    ctx.textBaseline = "bottom"; ctx.fillText(fmt(t1), box.x - 4, box.y + box.h);
    // colour bar
    const cb = { x: box.x + box.w + 16, y: box.y, w: 14, h: box.h };
    for (let i = 0; i < cb.h; i++) {
      const [r, g, b] = viridis(1 - i / cb.h);
      ctx.fillStyle = `rgb(${r | 0},${g | 0},${b | 0})`;
      ctx.fillRect(cb.x, cb.y + i, cb.w, 1);
    }
    ctx.fillStyle = "#333"; ctx.textAlign = "left";
    ctx.textBaseline = "top"; ctx.fillText(S.vmax.toFixed(2), cb.x + cb.w + 4, cb.y);
    ctx.textBaseline = "bottom"; ctx.fillText("0", cb.x + cb.w + 4, cb.y + cb.h);
    $("heat-note").textContent = `${m} spectra${m >= SPECTRA_KEEP ? " (the latest)" : ""}`;
  }

  function drawStatus() {
    const n = S.seq.length;
    const fc = $("frame-count");
    fc.textContent = `${n} frames`;
    fc.dataset.n = String(n);
    $("run-status").textContent = S.runStatus ? `run ${S.runStatus}` : "";
    const e = S.engine;
    if (e) {
      const f = (x, d) => (x === null || x === undefined ? "-" : Number(x).toFixed(d));
      const sinks = (e.sinks || []).map((q) => `${q.name} ${q.queue_depth}/${q.queue_capacity}${q.blocked ? " BLOCKED" : ""}`).join(", ");
      $("engine-status").textContent = `engine: ${f(e.frames_per_s, 1)} frames/s, latency p50 ${f(e.latency_p50_ms, 0)} ms p99 ${f(e.latency_p99_ms, 0)} ms, lag ${e.lag ?? "-"}, pending ${e.pending ?? 0}${sinks ? `, sinks ${sinks}` : ""}`;
    }
  }

  function redraw() {
    if (!S.dirty) return;
    S.dirty = false;
    S.redraws += 1;
    try {
      drawStatus();
      if (!S.schema) return;
      drawDescriptor();
      drawProcess();
      drawScatter();
      drawSpectra();
      drawHeatmap();
    } catch (err) {
      console.error(err);
    }
  }

  setInterval(redraw, REDRAW_MS);
  // the run list: every second until a run is shown, then every 3 s
  (function pollRuns() {
    refreshRuns().finally(() => setTimeout(pollRuns, S.runId ? 3000 : 1000));
  })();
  window.addEventListener("resize", () => { S.dirty = true; S.heatFull = true; });
})();
