// Small inline SVG charts: drawn from numbers with createElementNS, nothing fetched, no library.
import { h, s, ms } from "./dom.js";

const W = 260, H = 64, PAD = 2;

function frame(title, max, unit, emptyText) {
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": title,
    preserveAspectRatio: "none" });
  svg.append(s("line", { x1: 0, y1: H - 0.5, x2: W, y2: H - 0.5, class: "axis" }));
  svg.append(s("line", { x1: 0, y1: PAD + 0.5, x2: W, y2: PAD + 0.5, class: "grid" }));
  return h("figure", { class: "chartbox" }, h("figcaption", null, h("span", null, title),
    emptyText ? null : h("span", { class: "muted small" }, `max ${unit(max)}`)), svg,
    emptyText ? h("div", { class: "chart-empty" }, emptyText) : null);
}

export function timeAxis(minutes) {
  return h("div", { class: "time-axis muted small" }, h("span", null, `${minutes} min ago`), h("span", null, "now"));
}

// Throughput per minute: completed stacked under failed.
export function throughputChart(minutes) {
  const totals = minutes.map((m) => (m.completed || 0) + (m.failed || 0));
  const max = Math.max(1, ...totals);
  const idle = totals.every((t) => t === 0);
  const box = frame("Throughput / min", max, (v) => String(v), idle ? "nothing finished" : null);
  const svg = box.querySelector("svg");
  const n = Math.max(minutes.length, 1), bw = W / n;
  minutes.forEach((m, i) => {
    const c = m.completed || 0, f = m.failed || 0;
    const hc = (c / max) * (H - PAD * 2), hf = (f / max) * (H - PAD * 2);
    const x = i * bw + 1, w = Math.max(bw - 2, 1);
    const tip = `${m.at || ""}: ${c} completed, ${f} failed`;
    if (c) svg.append(s("rect", { x, y: H - hc, width: w, height: hc, class: "bar ok" }, s("title", null, tip)));
    if (f) svg.append(s("rect", { x, y: H - hc - hf, width: w, height: hf, class: "bar bad" }, s("title", null, tip)));
  });
  box.append(timeAxis(minutes.length), h("div", { class: "legend" }, h("span", { class: "key done" }, "completed"),
    h("span", { class: "key failed" }, "failed")));
  return box;
}

// End-to-end latency percentiles per minute, one line each; gaps where a minute had no request.
export function latencyChart(minutes) {
  const keys = [["p50_ms", "p50"], ["p95_ms", "p95"], ["p99_ms", "p99"]];
  const all = minutes.flatMap((m) => keys.map(([k]) => m[k])).filter((v) => v != null);
  const max = Math.max(1, ...all);
  const box = frame("Latency p50 / p95 / p99", max, ms, all.length ? null : "nothing finished");
  const svg = box.querySelector("svg");
  const n = Math.max(minutes.length - 1, 1);
  for (const [k, label] of keys) {
    let d = "", pen = "M";
    minutes.forEach((m, i) => {
      const v = m[k];
      if (v == null) { pen = "M"; return; }
      const x = (i / n) * W, y = H - PAD - (v / max) * (H - PAD * 2);
      d += `${pen}${x.toFixed(1)},${y.toFixed(1)} `;
      pen = "L";
    });
    if (d) svg.append(s("path", { d, class: `line ${label}` }, s("title", null, label)));
    // A minute alone (no neighbour to draw a line to) still shows, as a dot.
    minutes.forEach((m, i) => {
      const v = m[k];
      const alone = v != null && minutes[i - 1]?.[k] == null && minutes[i + 1]?.[k] == null;
      if (alone) {
        const x = (i / n) * W, y = H - PAD - (v / max) * (H - PAD * 2);
        svg.append(s("path", { d: `M${x.toFixed(1)},${y.toFixed(1)} h0.01`, class: `line dot ${label}` },
          s("title", null, `${label} ${ms(v)}`)));
      }
    });
  }
  const last = [...minutes].reverse().find((m) => m.p50_ms != null);
  box.append(timeAxis(minutes.length));
  box.append(h("div", { class: "legend" }, keys.map(([k, label]) =>
    h("span", { class: `key ${label}` }, `${label} ${last ? ms(last[k]) : "—"}`))));
  return box;
}
