// Drawing: the waveform and the clip's spectrogram on one time axis, the window the model saw
// with its axes, the detection timeline, score bars, the training curve, the confusion matrix.
// Every plot shares one layout (a left gutter for the frequency axis), so times line up.

export const GUTTER = 52;  // px left of every time plot: the frequency axis' labels
export const RIGHT = 10;

const INK = "#1d2433";
const MUTED = "#667085";
const ACCENT = "rgba(36, 99, 235, 0.18)";
const PALETTE = ["#2463eb", "#d92d20", "#12b76a", "#f79009", "#7a5af8", "#0ba5ec", "#ee46bc", "#667085",
                 "#a15c07", "#099250"];

export const percent = (p) => `${(100 * p).toFixed(1)} %`;
export const seconds = (s) => `${(+s).toFixed(s < 10 ? 2 : 1)} s`;
export const colour = (i) => PALETTE[i % PALETTE.length];

// A canvas sized to its CSS box at the screen's density; returns its 2D context in CSS pixels.
export function fitCanvas(canvas, height) {
  const scale = window.devicePixelRatio || 1;
  const width = Math.max(300, canvas.clientWidth || canvas.parentElement.clientWidth || 600);
  canvas.style.height = `${height}px`;
  canvas.width = Math.round(width * scale);
  canvas.height = Math.round(height * scale);
  const g = canvas.getContext("2d");
  g.setTransform(scale, 0, 0, scale, 0, 0);
  g.clearRect(0, 0, width, height);
  return { g, width, height };
}

// "Nice" tick step for a span: 1, 2 or 5 times a power of ten, about `count` ticks.
export function tickStep(span, count = 8) {
  const raw = span / Math.max(1, count);
  const power = 10 ** Math.floor(Math.log10(raw || 1));
  return [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) || power * 10;
}

function timeAxis(g, x, y, duration, width) {
  g.fillStyle = MUTED;
  g.strokeStyle = MUTED;
  g.font = "11px system-ui, sans-serif";
  g.textAlign = "center";
  const step = tickStep(duration, Math.max(2, Math.floor((width - GUTTER) / 70)));
  for (let t = 0; t <= duration + 1e-9; t += step) {
    g.fillRect(x(t), y, 1, 4);
    g.fillText(`${+t.toFixed(2)} s`, Math.min(Math.max(x(t), GUTTER + 12), width - 16), y + 15);
  }
  g.textAlign = "left";
}

// The waveform (min/max envelope) with the windows shaded and the selected one highlighted.
export function drawWaveform(canvas, answer, selected, playhead = null, height = 90) {
  const { g, width } = fitCanvas(canvas, height);
  const duration = Math.max(answer.duration, 1e-6);
  const x = (t) => GUTTER + (t / duration) * (width - GUTTER - RIGHT);
  (answer.windows || []).forEach((w, i) => {
    g.fillStyle = i === selected ? ACCENT : i % 2 ? "rgba(0,0,0,0.035)" : "rgba(0,0,0,0)";
    g.fillRect(x(w.start), 0, x(Math.min(w.end, duration)) - x(w.start), height);
  });
  const env = answer.waveform;
  if (env) {
    const mid = height / 2, amp = height / 2 - 4, n = env.min.length, plot = width - GUTTER - RIGHT;
    g.strokeStyle = INK;
    g.lineWidth = Math.max(1, plot / n);
    g.beginPath();
    for (let i = 0; i < n; i++) {
      const px = GUTTER + ((i + 0.5) / n) * plot;
      g.moveTo(px, mid - env.max[i] * amp);
      g.lineTo(px, mid - env.min[i] * amp + 0.5);
    }
    g.stroke();
  }
  g.fillStyle = MUTED;
  g.font = "11px system-ui, sans-serif";
  g.fillText("wave", 6, height / 2 + 4);
  drawPlayhead(g, x, playhead, height);
}

function drawPlayhead(g, x, t, height) {
  if (t === null || t === undefined) return;
  g.fillStyle = "#d92d20";
  g.fillRect(x(t) - 1, 0, 2, height);
}

// Frequency ticks for mel bands whose centres are `bandHz` (low to high), on rows that run
// from `top` (highest band) to `bottom` (lowest band).
function frequencyAxis(g, bandHz, top, bottom) {
  const n = bandHz.length;
  if (!n) return;
  const row = (hz) => {  // fractional band index of hz, by interpolating the centres
    let k = bandHz.findIndex((f) => f >= hz);
    if (k <= 0) k = 1;
    const f0 = bandHz[k - 1], f1 = bandHz[k];
    const index = k - 1 + (hz - f0) / Math.max(1e-9, f1 - f0);
    return bottom - ((index + 0.5) / n) * (bottom - top);
  };
  const ticks = [50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000].filter((f) => f >= bandHz[0] && f <= bandHz[n - 1]);
  g.fillStyle = MUTED;
  g.font = "11px system-ui, sans-serif";
  g.textAlign = "right";
  let last = Infinity;
  for (const f of ticks) {
    const y = row(f);
    if (last - y < 13) continue;  // labels would overlap
    last = y;
    g.fillRect(GUTTER - 4, y, 4, 1);
    g.fillText(f >= 1000 ? `${f / 1000} kHz` : `${f} Hz`, GUTTER - 6, y + 4);
  }
  g.textAlign = "left";
}

// The whole clip's spectrogram, time on the same axis as the waveform above it, frequency
// (mel bands) on the left; the selected window outlined. `image` is a loaded <img> of
// answer.clip_spectrogram.image.
export function drawClipSpectrogram(canvas, answer, image, selected, playhead = null, height = 170) {
  const { g, width } = fitCanvas(canvas, height);
  const spec = answer.clip_spectrogram;
  const duration = Math.max(answer.duration, 1e-6);
  const plot = width - GUTTER - RIGHT, bottom = height - 22;
  const x = (t) => GUTTER + (t / duration) * plot;
  if (image && image.naturalWidth) {
    const columns = image.naturalWidth;
    const covered = Math.min(1, (columns * spec.column_seconds) / duration);  // frames past the end are padding
    g.imageSmoothingEnabled = columns < plot;
    g.drawImage(image, 0, 0, columns, image.naturalHeight, GUTTER, 0, plot * covered, bottom);
  }
  g.strokeStyle = MUTED;
  g.strokeRect(GUTTER - 0.5, -0.5, plot + 1, bottom + 1);
  const w = answer.windows && answer.windows[selected];
  if (w && answer.windows.length > 1) {
    g.strokeStyle = "#ffffff";
    g.lineWidth = 2;
    g.strokeRect(x(w.start), 1, x(Math.min(w.end, duration)) - x(w.start), bottom - 2);
    g.lineWidth = 1;
  }
  if (spec) frequencyAxis(g, spec.band_hz, 0, bottom);
  timeAxis(g, x, bottom, duration, width);
  drawPlayhead(g, x, playhead, bottom);
}

// The window's image exactly as the model saw it, with its own axes: time within the window
// (the part past a short clip's end is padding, as in training) and frequency.
export function drawWindowImage(canvas, answer, image, index, size = 250) {
  const w = answer.windows[index];
  const spec = answer.clip_spectrogram;
  const height = size + 26;
  const { g, width } = fitCanvas(canvas, height);
  const side = Math.min(size, width - GUTTER - RIGHT);
  if (image && image.naturalWidth) {
    g.imageSmoothingEnabled = false;
    g.drawImage(image, GUTTER, 0, side, side);
  }
  g.strokeStyle = MUTED;
  g.strokeRect(GUTTER - 0.5, -0.5, side + 1, side + 1);
  const window = answer.window_seconds;
  const x = (t) => GUTTER + ((t - w.start) / window) * side;
  const real = Math.min(w.end, answer.duration);
  if (real < w.start + window - 1e-6) {  // padded: a short clip filled to the window
    g.fillStyle = "rgba(255,255,255,0.55)";
    g.fillRect(x(real), 0, GUTTER + side - x(real), side);
    g.fillStyle = INK;
    g.font = "11px system-ui, sans-serif";
    g.fillText(`padded (${answer.pad_mode || "repeat"})`, x(real) + 4, 14);
  }
  if (spec) frequencyAxis(g, spec.band_hz, 0, side);
  g.fillStyle = MUTED;
  g.strokeStyle = MUTED;
  g.font = "11px system-ui, sans-serif";
  g.textAlign = "center";
  const step = tickStep(window, 4);
  for (let t = 0; t <= window + 1e-9; t += step) {
    const px = GUTTER + (t / window) * side;
    g.fillRect(px, side, 1, 4);
    g.fillText(`${+(w.start + t).toFixed(2)} s`, Math.min(px, GUTTER + side - 14), side + 16);
  }
  g.textAlign = "left";
}

// Detections over time: one lane per class, each window's probability of that class as the
// lane's opacity, the window's top class outlined. `labels` fixes the lanes' order.
export function drawTimeline(canvas, answer, labels, selected, playhead = null) {
  const lanes = labels.length;
  const lane = 18;
  const height = lanes * lane + 24;
  const { g, width } = fitCanvas(canvas, height);
  const duration = Math.max(answer.duration, 1e-6);
  const x = (t) => GUTTER + (t / duration) * (width - GUTTER - RIGHT);
  g.font = "11px system-ui, sans-serif";
  labels.forEach((label, k) => {
    const y = k * lane;
    g.fillStyle = k % 2 ? "#f6f7fa" : "#fbfcfe";
    g.fillRect(GUTTER, y, width - GUTTER - RIGHT, lane);
    g.fillStyle = INK;
    g.textAlign = "right";
    g.fillText(label.length > 8 ? `${label.slice(0, 7)}…` : label, GUTTER - 6, y + 13);
    g.textAlign = "left";
  });
  answer.windows.forEach((w, i) => {
    if (w.silent) return;
    const scores = Object.fromEntries(w.top.map((t) => [t.label, t.score]));
    labels.forEach((label, k) => {
      const p = scores[label] || 0;
      if (p < 0.02) return;
      g.globalAlpha = Math.min(1, p);
      g.fillStyle = colour(k);
      g.fillRect(x(w.start), k * lane + 2, Math.max(1, x(Math.min(w.end, duration)) - x(w.start)), lane - 4);
      g.globalAlpha = 1;
      if ((w.label || w.top[0].label) === label) {
        g.strokeStyle = INK;
        g.strokeRect(x(w.start) + 0.5, k * lane + 2.5, Math.max(1, x(Math.min(w.end, duration)) - x(w.start)) - 1, lane - 5);
      }
    });
  });
  const w = answer.windows[selected];
  if (w) {
    g.strokeStyle = "#2463eb";
    g.lineWidth = 2;
    g.strokeRect(x(w.start), 0, x(Math.min(w.end, duration)) - x(w.start), lanes * lane);
    g.lineWidth = 1;
  }
  timeAxis(g, x, lanes * lane, duration, width);
  drawPlayhead(g, x, playhead, lanes * lane);
}

// Bars: [{label, score}] into an <ol>, best first (or in the given order).
export function fillBars(list, items, highlight = null) {
  list.replaceChildren();
  for (const { label, score } of items) {
    const li = document.createElement("li");
    const name = Object.assign(document.createElement("span"), { className: "name", textContent: label, title: label });
    const track = Object.assign(document.createElement("span"), { className: "track" });
    const fill = Object.assign(document.createElement("span"), { className: "fill" });
    fill.style.width = `${Math.max(0.5, 100 * score)}%`;
    track.append(fill);
    const value = Object.assign(document.createElement("span"), { className: "value", textContent: percent(score) });
    li.append(name, track, value);
    li.dataset.label = label;
    li.dataset.score = score;
    if (highlight !== null && label === highlight) li.classList.add("best");
    list.append(li);
  }
}

// A small score bar for a table cell.
export function scoreCell(score) {
  const td = document.createElement("td");
  td.className = "score-cell";
  const track = Object.assign(document.createElement("span"), { className: "track" });
  const fill = Object.assign(document.createElement("span"), { className: "fill" });
  fill.style.width = `${Math.max(0.5, 100 * score)}%`;
  track.append(fill);
  td.append(track, Object.assign(document.createElement("span"), { className: "value", textContent: percent(score) }));
  return td;
}

// Training accuracy against step: [[step, train, validation|null], ...].
export function drawCurve(canvas, curve, totalSteps) {
  const height = 180;
  const { g, width } = fitCanvas(canvas, height);
  const left = 44, bottom = height - 24, right = width - 12, top = 8;
  const maxStep = Math.max(1, totalSteps || 0, ...curve.map((p) => p[0]));
  const x = (s) => left + (s / maxStep) * (right - left);
  const y = (a) => bottom - a * (bottom - top);
  g.strokeStyle = "#e4e7ec";
  g.fillStyle = MUTED;
  g.font = "11px system-ui, sans-serif";
  for (const a of [0, 0.25, 0.5, 0.75, 1]) {
    g.beginPath(); g.moveTo(left, y(a)); g.lineTo(right, y(a)); g.stroke();
    g.fillText(`${a * 100} %`, 4, y(a) + 4);
  }
  const step = tickStep(maxStep, 6);
  g.textAlign = "center";
  for (let s = 0; s <= maxStep; s += step) g.fillText(String(s), x(s), bottom + 15);
  g.textAlign = "left";
  const line = (k, stroke) => {
    const points = curve.filter((p) => p[k] !== null && p[k] !== undefined);
    if (!points.length) return;
    g.strokeStyle = stroke;
    g.lineWidth = 2;
    g.beginPath();
    points.forEach((p, i) => (i ? g.lineTo(x(p[0]), y(p[k])) : g.moveTo(x(p[0]), y(p[k]))));
    g.stroke();
    g.lineWidth = 1;
  };
  line(1, "#2463eb");
  line(2, "#d92d20");
}

// A confusion matrix as an HTML table: rows true, columns predicted, each cell shaded by its
// share of the row, the diagonal in the accent colour.
export function confusionTable(table, labels, counts) {
  table.replaceChildren();
  const head = table.createTHead().insertRow();
  head.append(Object.assign(document.createElement("th"), { textContent: "true \\ predicted" }));
  for (const label of labels) head.append(Object.assign(document.createElement("th"), { textContent: label, title: label }));
  const body = table.createTBody();
  counts.forEach((row, i) => {
    const tr = body.insertRow();
    const total = row.reduce((a, b) => a + b, 0);
    tr.append(Object.assign(document.createElement("th"), { textContent: `${labels[i]} (${total})` }));
    row.forEach((n, j) => {
      const td = tr.insertCell();
      td.textContent = n ? String(n) : "";
      const share = total ? n / total : 0;
      const hue = i === j ? "36, 99, 235" : "217, 45, 32";
      td.style.background = n ? `rgba(${hue}, ${0.12 + 0.7 * share})` : "";
      td.style.color = share > 0.55 ? "#fff" : "";
      td.title = `${labels[i]} → ${labels[j]}: ${n} of ${total}`;
    });
  });
}
