// The page of `label_image --serve` and `label_image --export_web`: record, upload or listen;
// show what the model says. Every answer comes through backend.js (the server's API, or the
// model running in this browser), as the JSON of GET /v1/model and POST /v1/label.
import { createBackend } from "./backend.js";
import { EventDetector, Reblocker } from "./trigger.js";
import { encodeWav } from "./wav.js";

const $ = (id) => document.getElementById(id);
const HISTORY_KEY = "soundretrain-history";
const HISTORY_MAX = 200;

const state = { backend: null, model: null, capture: null, mode: null, history: loadHistory(), busy: 0 };

// --- status line --------------------------------------------------------------------

function status(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

const seconds = (s) => `${(+s).toFixed(s < 10 ? 2 : 1)} s`;
const percent = (p) => `${(100 * p).toFixed(1)} %`;

// --- the microphone -------------------------------------------------------------------

// getUserMedia -> AudioWorklet ("capture") -> onChunk(Float32Array) on this thread.
class Capture {
  async start(onChunk) {
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false, channelCount: 1 },
    });
    this.context = new AudioContext();
    this.rate = this.context.sampleRate;  // known before the first chunk arrives
    await this.context.audioWorklet.addModule(new URL("./capture-worklet.js", import.meta.url));
    const source = this.context.createMediaStreamSource(this.stream);
    this.node = new AudioWorkletNode(this.context, "capture");
    this.node.port.onmessage = (e) => onChunk(e.data);
    const mute = this.context.createGain();  // pulled by the destination, heard by no one
    mute.gain.value = 0;
    source.connect(this.node);
    this.node.connect(mute);
    mute.connect(this.context.destination);
    await this.context.resume();
    return this.context.sampleRate;
  }
  stop() {
    if (this.node) this.node.port.onmessage = null;
    if (this.stream) this.stream.getTracks().forEach((t) => t.stop());
    if (this.context) this.context.close();
    this.node = this.stream = this.context = null;
  }
}

function micAvailable() {
  return !!(navigator.mediaDevices && navigator.mediaDevices.getUserMedia && window.AudioWorkletNode);
}

async function startCapture(mode, capture, onChunk) {
  stopCapture();
  state.capture = capture;
  state.mode = mode;
  try {
    return await state.capture.start(onChunk);
  } catch (e) {
    stopCapture();
    throw new Error(`cannot use the microphone: ${e.message || e.name}`);
  }
}

function stopCapture() {
  if (state.capture) state.capture.stop();
  state.capture = null;
  state.mode = null;
  $("record").classList.remove("recording");
  $("record").textContent = "● Record";
  $("listen").setAttribute("aria-pressed", "false");
  $("listen").textContent = "Listen continuously";
  $("meter").hidden = true;
}

// Record: the trigger's record_seconds (as one `--mic` event), or until clicked again.
async function toggleRecord() {
  if (state.mode === "record") { state.finishRecording(); return; }
  const chunks = [];
  let total = 0;
  let rate = 0;
  const capture = new Capture();
  const want = state.model.trigger.record_seconds;
  const finish = () => {
    if (state.mode !== "record") return;
    stopCapture();
    if (!total) { status("nothing was recorded", true); return; }
    const y = new Float32Array(Math.min(total, Math.round(want * rate)));  // chunks overshoot
    let at = 0;
    for (const c of chunks) {
      if (at >= y.length) break;
      y.set(c.subarray(0, y.length - at), at);
      at += c.length;
    }
    send(encodeWav(y, rate), `recording-${clock(new Date())}.wav`);
  };
  state.finishRecording = finish;
  try {
    await startCapture("record", capture, (chunk) => {
      rate = capture.rate;
      chunks.push(chunk);
      total += chunk.length;
      status(`recording… ${seconds(total / rate)} of ${seconds(want)} (click Stop to end sooner)`);
      if (total >= want * rate) finish();
    });
  } catch (e) { status(e.message, true); return; }
  if (state.mode !== "record") return;  // finished already
  $("record").classList.add("recording");
  $("record").textContent = "■ Stop";
  status("recording…");
}

// Listen: the energy trigger of `label_image --mic`, each event labelled as it ends.
async function toggleListen() {
  if (state.mode === "listen") { stopCapture(); status("stopped listening"); return; }
  const p = state.model.trigger;
  const capture = new Capture();
  let detector = null, reblocker = null;
  let events = 0;
  try {
    await startCapture("listen", capture, (chunk) => {
      if (!detector) {
        detector = new EventDetector(p, capture.rate);
        reblocker = new Reblocker(detector.frames);
      }
      for (const block of reblocker.push(chunk)) {
        const event = detector.push(block);
        if (event) {
          events += 1;
          send(encodeWav(event.y, event.sr), `event-${clock(event.wallTime)}.wav`,
               `event ${events} at t=${event.start.toFixed(2)} s`);
        }
      }
      if (state.mode === "listen") showMeter(detector);
    });
  } catch (e) { status(e.message, true); return; }
  $("listen").setAttribute("aria-pressed", "true");
  $("listen").textContent = "■ Stop listening";
  $("meter").hidden = false;
  status(`listening: a sound ${p.trigger_db} dB over the noise floor records ${seconds(p.record_seconds)}`);
}

function showMeter(detector) {
  const lo = -90, hi = 0;
  const pos = (db) => `${Math.max(0, Math.min(100, (100 * (db - lo)) / (hi - lo)))}%`;
  const level = detector.level;
  const threshold = detector.trigger.thresholdDb;
  $("meter-level").style.width = pos(level);
  $("meter-level").classList.toggle("loud", level > threshold);
  $("meter-threshold").style.left = pos(threshold);
  const floor = detector.trigger.floorDb;
  $("meter-text").textContent = `level ${level.toFixed(0)} dBFS · floor ${floor === null ? "…" : floor.toFixed(0)} dBFS`
    + (detector.isRecording ? " · recording" : "");
}

// --- sending and showing ----------------------------------------------------------------

async function send(blob, name, note = "") {
  const limit = state.model.limits.max_upload_bytes;
  if (blob.size > limit) {
    status(`${name}: ${(blob.size / 2 ** 20).toFixed(1)} MB is over the server's limit of ${(limit / 2 ** 20).toFixed(0)} MB`, true);
    return;
  }
  state.busy += 1;
  if (state.mode !== "record") status(`labelling ${name}…`);
  try {
    const answer = await state.backend.label(blob, name, { display: true });
    answer.note = note;
    showResult(answer);
    addHistory(answer);
    if (state.mode !== "listen") status(`${name}: ${answer.label} (${percent(answer.score)})`);
  } catch (e) {
    status(e.message, true);
  } finally {
    state.busy -= 1;
  }
}

function bestWindow(answer) {
  let best = 0, bestScore = -1;
  answer.windows.forEach((w, i) => {
    const s = (w.top.find((t) => t.label === answer.label) || { score: 0 }).score;
    if (!w.silent && s > bestScore) { best = i; bestScore = s; }
  });
  return best;
}

function showResult(answer) {
  state.result = answer;
  $("result").hidden = false;
  $("result-label").textContent = answer.label;
  $("result-score").textContent = percent(answer.score);
  const n = answer.windows.length;
  $("result-source").textContent = [answer.source, seconds(answer.duration),
    n > 1 ? `${n} windows of ${seconds(answer.window_seconds)}, summary = mean of the non-silent ones` : null,
    answer.note || null, `${answer.elapsed_ms} ms`].filter(Boolean).join(" · ");
  const rows = $("windows").querySelector("tbody");
  rows.replaceChildren();
  answer.windows.forEach((w, i) => {
    const tr = document.createElement("tr");
    tr.dataset.index = i;
    if (w.silent) tr.classList.add("silent");
    for (const text of [`${w.start.toFixed(2)}–${w.end.toFixed(2)} s`, w.top[0].label, percent(w.top[0].score), w.silent ? "silent" : ""]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    tr.addEventListener("click", () => selectWindow(i, true));
    rows.append(tr);
  });
  $("windows-box").hidden = n < 2;
  selectWindow(bestWindow(answer), false);
}

function showBars(top, scope) {
  $("top-scope").textContent = scope;
  const list = $("top");
  list.replaceChildren();
  for (const { label, score } of top) {
    const li = document.createElement("li");
    const name = Object.assign(document.createElement("span"), { className: "name", textContent: label, title: label });
    const track = Object.assign(document.createElement("span"), { className: "track" });
    const fill = Object.assign(document.createElement("span"), { className: "fill" });
    fill.style.display = "block";
    fill.style.width = `${Math.max(0.5, 100 * score)}%`;
    track.append(fill);
    const value = Object.assign(document.createElement("span"), { className: "value", textContent: percent(score) });
    li.append(name, track, value);
    li.dataset.label = label;
    li.dataset.score = score;
    list.append(li);
  }
}

// The bars show the whole clip, or the window picked in the table (click again: the clip).
function selectWindow(i, fromTable) {
  const answer = state.result;
  const w = answer.windows[i];
  const again = fromTable && state.selected === i && state.barsForWindow;
  state.selected = i;
  state.barsForWindow = fromTable && !again;
  if (state.barsForWindow) showBars(w.top, `(window ${w.start.toFixed(2)}–${w.end.toFixed(2)} s)`);
  else showBars(answer.top, answer.windows.length > 1 ? "(whole clip)" : "");
  for (const tr of $("windows").querySelectorAll("tbody tr")) tr.classList.toggle("selected", +tr.dataset.index === i);
  const img = $("spectrogram");
  if (w.spectrogram) { img.src = w.spectrogram; img.hidden = false; } else { img.hidden = true; }
  const size = state.model.image_size;
  $("spectrogram-caption").textContent = answer.spectrogram_as_model_input
    ? `window ${w.start.toFixed(2)}–${w.end.toFixed(2)} s exactly as the model saw it (${size}×${size})`
    : `window ${w.start.toFixed(2)}–${w.end.toFixed(2)} s (this model takes the waveform; spectrogram for display)`;
  drawWaveform(answer, i);
}

function drawWaveform(answer, selected) {
  const canvas = $("waveform");
  const scale = window.devicePixelRatio || 1;
  const width = Math.max(300, canvas.clientWidth) * scale;
  const height = canvas.clientHeight * scale || 110;
  canvas.width = width;
  canvas.height = height;
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, width, height);
  const duration = Math.max(answer.duration, 1e-6);
  const x = (t) => (t / duration) * width;
  answer.windows.forEach((w, i) => {  // window spans: the selected one highlighted
    g.fillStyle = i === selected ? "rgba(36, 99, 235, 0.16)" : i % 2 ? "rgba(0,0,0,0.03)" : "rgba(0,0,0,0)";
    g.fillRect(x(w.start), 0, x(Math.min(w.end, duration)) - x(w.start), height);
  });
  const env = answer.waveform;
  if (env) {
    const mid = height / 2, amp = height / 2 - 4, n = env.min.length;
    g.strokeStyle = "#1d2433";
    g.lineWidth = Math.max(1, width / n);
    g.beginPath();
    for (let i = 0; i < n; i++) {
      const px = ((i + 0.5) / n) * width;
      g.moveTo(px, mid - env.max[i] * amp);
      g.lineTo(px, mid - env.min[i] * amp + 0.5);
    }
    g.stroke();
  }
  g.fillStyle = "#667085";
  g.font = `${11 * scale}px system-ui, sans-serif`;
  const step = [0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120].find((s) => duration / s <= 10) || 300;
  for (let t = 0; t <= duration + 1e-9; t += step) {
    g.fillRect(x(t), height - 5 * scale, scale, 5 * scale);
    g.fillText(`${+t.toFixed(2)} s`, x(t) + 3 * scale, height - 6 * scale);
  }
}

// --- history -----------------------------------------------------------------------------

function loadHistory() {
  try { return JSON.parse(localStorage.getItem(HISTORY_KEY)) || []; } catch { return []; }
}

function saveHistory() {
  try { localStorage.setItem(HISTORY_KEY, JSON.stringify(state.history)); } catch { /* private mode: memory only */ }
}

function addHistory(answer) {
  state.history.unshift({
    time: new Date().toISOString(), model: state.model.model, clip: answer.source, duration: answer.duration,
    windows: answer.windows.length, top: answer.top.map(({ label, score }) => ({ label, score })),
  });
  state.history.length = Math.min(state.history.length, HISTORY_MAX);
  saveHistory();
  showHistory();
}

function showHistory() {
  const rows = $("history").querySelector("tbody");
  rows.replaceChildren();
  for (const h of state.history) {
    const tr = document.createElement("tr");
    const next = h.top.slice(1, 3).map((t) => `${t.label} ${percent(t.score)}`).join(", ");
    for (const text of [new Date(h.time).toLocaleTimeString(), h.clip, seconds(h.duration), h.top[0].label, percent(h.top[0].score), next]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    rows.append(tr);
  }
  $("download-csv").disabled = $("clear-history").disabled = !state.history.length;
}

function csvCell(value) {
  const s = String(value);
  return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

export function historyCsv(history) {
  const k = Math.max(1, ...history.map((h) => h.top.length));
  const header = ["time", "model", "clip", "duration_s", "windows", "label", "score"];
  for (let i = 2; i <= k; i++) header.push(`label_${i}`, `score_${i}`);
  const lines = [header.join(",")];
  for (const h of history) {
    const row = [h.time, h.model || "", h.clip, h.duration, h.windows];
    for (let i = 0; i < k; i++) row.push(h.top[i] ? h.top[i].label : "", h.top[i] ? h.top[i].score : "");
    lines.push(row.map(csvCell).join(","));
  }
  return lines.join("\n") + "\n";
}

function downloadCsv() {
  const url = URL.createObjectURL(new Blob([historyCsv(state.history)], { type: "text/csv" }));
  const a = Object.assign(document.createElement("a"), { href: url, download: `soundretrain-labels-${clock(new Date())}.csv` });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// --- files: choose or drop ---------------------------------------------------------------

function sendFiles(files) {
  for (const file of files) send(file, file.name);
}

// A file dropped anywhere on the page is labelled (once: one listener, on the document).
function setUpDropzone() {
  const zone = $("dropzone");
  const highlight = (on) => (e) => { e.preventDefault(); zone.classList.toggle("over", on); };
  document.addEventListener("dragover", highlight(true));
  document.addEventListener("dragleave", highlight(false));
  document.addEventListener("drop", (e) => {
    highlight(false)(e);
    if (e.dataTransfer && e.dataTransfer.files.length) sendFiles(e.dataTransfer.files);
  });
}

function clock(date) {
  return date.toTimeString().slice(0, 8).replace(/:/g, "-");
}

// --- start --------------------------------------------------------------------------------

async function main() {
  try {
    state.backend = await createBackend();
    state.model = await state.backend.model();
  } catch (e) {
    $("model-info").textContent = `cannot load the model description: ${e.message}`;
    return;
  }
  const m = state.model;
  const accuracy = typeof m.test_accuracy === "number" ? `test accuracy ${percent(m.test_accuracy)}` : "test accuracy not recorded";
  $("model-info").textContent = `${m.model} · ${m.labels.length} labels (${m.labels.join(", ")}) · ${accuracy} · `
    + `${m.sample_rate} Hz, ${seconds(m.window_seconds)} windows`;
  document.title = `${m.model}: what is this sound?`;
  if (m.runs_in) $("runs-in").textContent = m.runs_in;
  if (micAvailable()) {
    $("record").disabled = $("listen").disabled = false;
  } else {
    const why = window.isSecureContext ? "this browser cannot record" : "the microphone needs https or localhost";
    $("record").title = $("listen").title = why;
    status(`${why}; uploading files works`);
  }
  $("record").addEventListener("click", toggleRecord);
  $("listen").addEventListener("click", toggleListen);
  $("file").addEventListener("change", (e) => { sendFiles(e.target.files); e.target.value = ""; });
  $("download-csv").addEventListener("click", downloadCsv);
  $("clear-history").addEventListener("click", () => { state.history = []; saveHistory(); showHistory(); });
  setUpDropzone();
  showHistory();
  document.body.dataset.ready = "true";
}

main();
