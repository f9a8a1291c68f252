// Stoker dashboard, a job's page: its training metrics (loss, tokens/s, MFU, the step-time
// breakdown with compute and exposed communication, peak memory) polled from GET /v1/jobs/{id}/metrics (only the steps after the last
// one seen) and drawn with uPlot; every rank's step time as a heat map on a canvas; and its
// log tail polled from GET /v1/jobs/{id}/logs.
(function () {
  "use strict";
  const root = document.getElementById("job");
  if (!root) return;
  const id = root.dataset.job;
  const METRICS_MS = 2000, LOG_MS = 3000, RECENT = 20, LOG_KEEP = 256 * 1024;
  const FIELDS = ["loss", "eval_loss", "tokens_per_s", "mfu", "step_time_s", "data_wait_s",
                  "fwd_bwd_s", "optim_s", "compute_s", "comm_s", "peak_mem_bytes",
                  "rank_step_times"];
  const cols = {step: []};
  for (const f of FIELDS) cols[f] = [];
  const HEAT_COLUMNS = 2000;  // more steps than this share a column (the slowest of them shows)
  let since = 0, revision = null, steps = Number(root.dataset.steps) || null;
  const charts = {};
  window.stokerCharts = charts;

  function chart(name, el, series, format) {
    const width = Math.max(280, el.clientWidth || 400);
    const opts = {
      width: width, height: 220,
      scales: {x: {time: false}},
      axes: [{label: "step"}, {size: 64, values: (u, ticks) => ticks.map(format)}],
      series: [{label: "step"}].concat(series),
      legend: {live: true},
    };
    charts[name] = new uPlot(opts, [[]].concat(series.map(() => [])), el);
  }

  function draw() {
    const ms = (key) => cols[key].map((v) => (v == null ? null : 1000 * v));
    charts.loss.setData([cols.step, cols.loss, cols.eval_loss]);
    charts.throughput.setData([cols.step, cols.tokens_per_s]);
    charts.mfu.setData([cols.step, cols.mfu]);
    charts.breakdown.setData([cols.step, ms("step_time_s"), ms("data_wait_s"), ms("fwd_bwd_s"),
                              ms("optim_s"), ms("compute_s"), ms("comm_s")]);
    charts.memory.setData([cols.step, cols.peak_mem_bytes]);
    heat();
  }

  // Rows are ranks, columns steps; each cell is the rank's step time over the fastest rank's
  // in that step: 1 (even) is pale, 1.5x or more is the darkest.
  function heat() {
    const canvas = document.getElementById("heat");
    const rows = cols.rank_step_times.filter((r) => Array.isArray(r) && r.length);
    if (!canvas || !rows.length) return;
    const ranks = rows[0].length, width = Math.min(rows.length, HEAT_COLUMNS);
    canvas.width = width;
    canvas.height = ranks;
    const ctx = canvas.getContext("2d"), sums = new Array(ranks).fill(0);
    const ratios = rows.map((times) => {
      const fastest = Math.min(...times);
      return times.map((t) => (fastest > 0 ? t / fastest : 1));
    });
    ratios.forEach((r) => r.forEach((x, rank) => { sums[rank] += x; }));
    for (let col = 0; col < width; col++) {
      const from = Math.floor(col * ratios.length / width);
      const to = Math.max(from + 1, Math.floor((col + 1) * ratios.length / width));
      for (let rank = 0; rank < ranks; rank++) {
        let worst = 1;
        for (let i = from; i < to; i++) worst = Math.max(worst, ratios[i][rank] || 1);
        const k = Math.min(1, (worst - 1) / 0.5);
        ctx.fillStyle = `rgb(${244 - 64 * k}, ${241 - 171 * k}, ${234 - 204 * k})`;
        ctx.fillRect(col, rank, 1, 1);
      }
    }
    const means = sums.map((x) => x / ratios.length);
    const slowest = means.indexOf(Math.max(...means));
    window.stokerHeat = {ranks: ranks, steps: ratios.length, means: means, slowest: slowest};
    document.getElementById("heat-note").textContent = ranks < 2 ? "one rank" :
      `slowest on average: rank ${slowest}, ${(100 * (means[slowest] - 1)).toFixed(1)}% ` +
      "over the fastest rank of each step";
  }

  function show(key, text) {
    const el = document.querySelector(`#progress [data-key="${key}"]`);
    if (el) el.textContent = text;
  }

  function fmt(x, digits) {
    if (x == null) return "-";
    if (Math.abs(x) >= 1000) return Math.round(x).toLocaleString("en");
    return Number(x).toPrecision(digits || 3);
  }

  function duration(s) {
    if (s == null) return "-";
    s = Math.max(0, s);
    if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + "s";
    const units = [["d", 86400], ["h", 3600], ["m", 60], ["s", 1]], parts = [];
    for (const [u, size] of units) {
      if (s >= size || parts.length) { parts.push(Math.floor(s / size) + u); s %= size; }
      if (parts.length === 2) break;
    }
    return parts.join(" ");
  }

  function mean(key) {
    const values = cols[key].slice(-RECENT).filter((v) => v != null);
    return values.length ? values.reduce((a, b) => a + b, 0) / values.length : null;
  }

  function progress(over) {
    const n = cols.step.length;
    if (!n) return;
    const step = cols.step[n - 1];
    const evals = cols.eval_loss.filter((v) => v != null);
    const stepTime = mean("step_time_s");
    show("step", steps ? `${step} / ${steps}` : String(step));
    show("loss", fmt(cols.loss[n - 1], 4));
    show("eval_loss", evals.length ? fmt(evals[evals.length - 1], 4) : "-");
    show("tokens_per_s", fmt(mean("tokens_per_s")));
    const mfu = mean("mfu");
    show("mfu", mfu == null ? "-" : (100 * mfu).toFixed(1) + "%");
    show("eta", over || stepTime == null || !steps ? "-" : duration((steps - step) * stepTime));
  }

  function add(page) {
    if (page.since < since) {  // steps rewritten by a restart: drop them, they come again
      const keep = cols.step.findIndex((s) => s > page.since);
      if (keep >= 0) for (const key in cols) cols[key].length = keep;
    }
    for (const r of page.records) {
      cols.step.push(r.step);
      for (const key of FIELDS) cols[key].push(r[key] == null ? null : r[key]);
    }
    since = page.next_since;
    revision = page.revision;
    steps = page.steps || steps;
  }

  async function pollMetrics() {
    const query = new URLSearchParams({since: String(since), limit: "5000"});
    if (revision) query.set("revision", revision);
    for (const f of FIELDS) query.append("field", f);
    let page;
    try {
      const response = await fetch(`/v1/jobs/${id}/metrics?${query}`, {credentials: "same-origin"});
      if (!response.ok) return;  // logged out or gone: the page stays as it is
      page = await response.json();
    } catch (e) {
      setTimeout(pollMetrics, METRICS_MS * 2);
      return;
    }
    add(page);
    draw();
    progress(page.done);
    root.dataset.metricsSteps = String(cols.step.length);
    if (page.more) pollMetrics();
    else if (page.done) {  // the job is over: nothing to cancel any more
      root.dataset.metricsDone = "1";
      const cancel = document.querySelector("form.cancel");
      if (cancel) cancel.remove();
    }
    else setTimeout(pollMetrics, METRICS_MS);
  }

  const log = document.getElementById("log");
  let logOffset = Number(root.dataset.logOffset) || 0;
  async function pollLog() {
    let chunk;
    try {
      const query = new URLSearchParams({offset: String(logOffset)});
      if (root.dataset.logRank) query.set("rank", root.dataset.logRank);
      const response = await fetch(`/v1/jobs/${id}/logs?${query}`, {credentials: "same-origin"});
      if (!response.ok) return;
      chunk = await response.json();
    } catch (e) {
      setTimeout(pollLog, LOG_MS * 2);
      return;
    }
    if (chunk.text) {
      const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      log.textContent = (log.textContent + chunk.text).slice(-LOG_KEEP);
      if (atEnd) log.scrollTop = log.scrollHeight;
    }
    logOffset = chunk.next_offset;
    if (!chunk.done) setTimeout(pollLog, chunk.text ? 500 : LOG_MS);
  }

  if (root.dataset.kind === "train" && window.uPlot) {
    const number = (v) => (v == null ? "" : fmt(v));
    chart("loss", document.getElementById("chart-loss"), [
      {label: "train loss", stroke: "#b4461e", width: 1.5},
      {label: "eval loss", stroke: "#1e6fb4", width: 0, spanGaps: true,
       points: {show: true, size: 6, fill: "#1e6fb4"}},
    ], number);
    chart("throughput", document.getElementById("chart-throughput"),
          [{label: "tokens/s", stroke: "#2a8a4a", width: 1.5}], number);
    chart("mfu", document.getElementById("chart-mfu"),
          [{label: "MFU", stroke: "#7a3cb4", width: 1.5,
            value: (u, v) => (v == null ? "-" : (100 * v).toFixed(1) + "%")}],
          (v) => (v == null ? "" : (100 * v).toFixed(1) + "%"));
    chart("breakdown", document.getElementById("chart-breakdown"), [
      {label: "total", stroke: "#333", width: 1.5},
      {label: "data wait", stroke: "#b4461e", width: 1},
      {label: "forward+backward", stroke: "#1e6fb4", width: 1},
      {label: "optimizer", stroke: "#2a8a4a", width: 1},
      // forward+backward and optimizer split into this rank's compute and its wait on the
      // others (exposed communication): CPU runs only, absent on CUDA
      {label: "compute", stroke: "#7a3cb4", width: 1, dash: [4, 3]},
      {label: "exposed comm", stroke: "#c08a00", width: 1, dash: [4, 3]},
    ], number);
    const mib = (v) => (v == null ? "" : (v / 2 ** 20).toFixed(v < 2 ** 24 ? 1 : 0) + " MiB");
    chart("memory", document.getElementById("chart-memory"),
          [{label: "peak", stroke: "#7a3cb4", width: 1.5, value: (u, v) => mib(v)}], mib);
    pollMetrics();
  }
  log.scrollTop = log.scrollHeight;
  if (root.dataset.over !== "1") setTimeout(pollLog, LOG_MS);
})();
