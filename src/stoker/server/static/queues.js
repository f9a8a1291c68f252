// Stoker dashboard, the Queues page: what each queue held of each flavor's GPUs and CPUs over
// the chosen window (GET /v1/queues/history), one uPlot chart per flavor and resource, a solid
// line per queue and a dashed one at its nominal quota; refreshed every 30 s.
(function () {
  "use strict";
  const root = document.getElementById("queue-history");
  const initial = document.getElementById("queue-history-data");
  if (!root || !initial || !window.uPlot) return;
  const REFRESH_MS = 30000;
  const COLOURS = ["#b4461e", "#1e6fb4", "#2a8a4a", "#7a3cb4", "#b48a1e", "#1eaab4", "#555"];
  const charts = {};
  window.stokerQueueCharts = charts;

  function groups(history) {
    const out = {};
    for (const s of history.series) {
      const key = `${s.flavor} ${s.resource}`;
      (out[key] = out[key] || []).push(s);
    }
    return out;
  }

  function columns(history, series) {
    const data = [history.times];
    for (const s of series) {
      data.push(s.held);
      if (s.nominal != null) data.push(history.times.map(() => s.nominal));
    }
    return data;
  }

  function build(key, history, series) {
    const figure = document.createElement("figure");
    const caption = document.createElement("figcaption");
    caption.textContent = `${key.split(" ")[0]}: ${key.split(" ")[1]}s held`;
    const el = document.createElement("div");
    el.className = "chart";
    figure.append(caption, el);
    root.append(figure);
    const lines = [{label: "time"}];
    series.forEach((s, i) => {
      const stroke = COLOURS[i % COLOURS.length];
      lines.push({label: s.queue, stroke: stroke, width: 1.5, points: {show: false}});
      if (s.nominal != null) lines.push({label: `${s.queue} nominal`, stroke: stroke, width: 1,
                                         dash: [6, 4], points: {show: false}});
    });
    const opts = {width: Math.max(280, el.clientWidth || 400), height: 220, series: lines,
                  scales: {x: {time: true}}, legend: {live: true}};
    charts[key] = new uPlot(opts, columns(history, series), el);
  }

  function draw(history) {
    for (const [key, series] of Object.entries(groups(history))) {
      if (charts[key]) charts[key].setData(columns(history, series));
      else build(key, history, series);
    }
    root.dataset.drawn = String(Object.keys(charts).length);
  }

  async function refresh() {
    const query = new URLSearchParams({window: root.dataset.windowS,
                                       buckets: root.dataset.buckets});
    try {
      const response = await fetch(`/v1/queues/history?${query}`, {credentials: "same-origin"});
      if (response.ok) draw(await response.json());
    } catch (e) { /* the next refresh tries again */ }
    setTimeout(refresh, REFRESH_MS);
  }

  draw(JSON.parse(initial.textContent));
  setTimeout(refresh, REFRESH_MS);
})();
