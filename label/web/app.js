// The page of `label_image --serve` and `label_image --export_web`: use a model (record,
// upload, listen for events, classify live) and, with `--project_dir`, the studio's tabs
// (collect, train, export: studio.js). Every label and model description comes through
// backend.js (the server's API, or the model running in this browser), as the JSON of
// GET /v1/model and POST /v1/label.
import { createBackend } from "./backend.js";
import { Capture, decodeBlob, micAvailable, play, recordFor, spanWav, stopPlaying } from "./audio.js";
import { LiveClassifier } from "./live.js";
import * as api from "./project-api.js";
import { startStudio } from "./studio.js";
import { EventDetector, Reblocker } from "./trigger.js";
import {
  drawClipSpectrogram, drawTimeline, drawWaveform, drawWindowImage, fillBars, percent, scoreCell, seconds,
} from "./view.js";
import { encodeWav } from "./wav.js";

const $ = (id) => document.getElementById(id);
const HISTORY_KEY = "soundretrain-history";
const HISTORY_MAX = 200;
const NOT_DETECTIONS = new Set(["unknown", "_background_"]);
const CONFIDENT = 0.5;  // a detection at or above this heads a long file's result (all are listed)

const state = {
  backend: null, model: null, capture: null, mode: null, history: loadHistory(), busy: 0,
  result: null, selected: 0, playhead: null, images: {}, live: null, studio: null, dataset: null,
};

// --- status line --------------------------------------------------------------------

function status(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

const recordSeconds = () => {
  const m = state.model;
  return m.record_seconds || (m.trigger && m.trigger.record_seconds) || m.window_seconds;
};

// --- the microphone -------------------------------------------------------------------

function stopCapture() {
  if (state.capture) state.capture.stop();
  if (state.live) state.live.stop();
  state.capture = state.live = null;
  state.mode = null;
  $("record").classList.remove("recording");
  $("record").textContent = "● Record";
  $("listen").setAttribute("aria-pressed", "false");
  $("listen").textContent = "Listen for events";
  $("live").setAttribute("aria-pressed", "false");
  $("live").textContent = "◉ Live";
  $("meter").hidden = true;
}

// Record: the model's window (or --record_seconds), or until clicked again.
function toggleRecord() {
  if (state.mode === "record") { state.capture.stop(); return; }
  stopCapture();
  const want = recordSeconds();
  const recording = recordFor(want, (t) => status(`recording… ${seconds(t)} of ${seconds(want)} (click Stop to end sooner)`));
  state.capture = { stop: recording.stop };
  state.mode = "record";
  $("record").classList.add("recording");
  $("record").textContent = "■ Stop";
  status("recording…");
  recording.done.then(({ y, sr }) => {
    stopCapture();
    if (!y.length) { status("nothing was recorded", true); return; }
    send(encodeWav(y, sr), `recording-${clock(new Date())}.wav`);
  }).catch((e) => { stopCapture(); status(e.message, true); });
}

// Listen: the energy trigger of `label_image --mic`, each event labelled as it ends.
async function toggleListen() {
  if (state.mode === "listen") { stopCapture(); status("stopped listening"); return; }
  stopCapture();
  const p = { ...state.model.trigger, record_seconds: recordSeconds() };
  const capture = new Capture();
  let detector = null, reblocker = null;
  let events = 0;
  state.capture = capture;
  state.mode = "listen";
  try {
    await capture.start((chunk) => {
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
      if (state.mode === "listen") showMeter(detector.level, detector.trigger.thresholdDb,
        `floor ${detector.trigger.floorDb === null ? "…" : detector.trigger.floorDb.toFixed(0)} dBFS`
        + (detector.isRecording ? " · recording" : ""));
    });
  } catch (e) { stopCapture(); status(`cannot use the microphone: ${e.message || e.name}`, true); return; }
  $("listen").setAttribute("aria-pressed", "true");
  $("listen").textContent = "■ Stop listening";
  $("meter").hidden = false;
  status(`listening: a sound ${p.trigger_db} dB over the noise floor records ${seconds(p.record_seconds)}`);
}

// Live: the last window of sound, classified again and again; bars for every class.
async function toggleLive() {
  if (state.mode === "live") { stopCapture(); status("stopped live classification"); return; }
  stopCapture();
  const m = state.model;
  const hop = Math.max(0.25, Math.min(1, m.window_seconds / 4));
  const labels = m.labels;
  $("live-box").hidden = false;
  $("live-label").textContent = "…";
  fillBars($("live-bars"), labels.map((label) => ({ label, score: 0 })));
  state.liveStrip = [];
  const live = new LiveClassifier(state.backend, {
    window: m.window_seconds, hop,
    onResult: (answer, end) => showLive(answer, end),
    onLevel: (db) => showMeter(db, null, "live"),
    onError: (e) => {
      if (/silent/.test(e.message)) { $("live-label").textContent = "silence"; $("live-score").textContent = ""; }
      else status(e.message, true);
    },
  });
  state.live = live;
  state.mode = "live";
  try {
    await live.start();
  } catch (e) { stopCapture(); status(`cannot use the microphone: ${e.message || e.name}`, true); return; }
  $("live").setAttribute("aria-pressed", "true");
  $("live").textContent = "■ Stop live";
  $("meter").hidden = false;
  status(`live: the last ${seconds(m.window_seconds)} classified every ${seconds(hop)}`);
}

function showLive(answer, end) {
  const scores = Object.fromEntries(answer.top.map((t) => [t.label, t.score]));
  const labels = state.model.labels;
  $("live-label").textContent = answer.label === "unknown" ? "unknown (no class fits)" : answer.label;
  $("live-score").textContent = percent(answer.score);
  fillBars($("live-bars"), labels.map((label) => ({ label, score: scores[label] || 0 })), answer.label);
  $("live-box").dataset.updates = String(+($("live-box").dataset.updates || 0) + 1);
  state.liveStrip.push({ end, label: answer.label, score: answer.score });
  if (state.liveStrip.length > 40) state.liveStrip.shift();
  const strip = $("live-strip");
  strip.replaceChildren(...state.liveStrip.map((s) => {
    const k = labels.indexOf(s.label);
    return Object.assign(document.createElement("span"), {
      className: "chip", textContent: s.label, title: `${seconds(s.end)}: ${s.label} ${percent(s.score)}`,
      style: `--k: ${k}`,
    });
  }));
}

function showMeter(level, threshold, text) {
  const lo = -90, hi = 0;
  const pos = (db) => `${Math.max(0, Math.min(100, (100 * (db - lo)) / (hi - lo)))}%`;
  $("meter-level").style.width = pos(level);
  $("meter-level").classList.toggle("loud", threshold !== null && level > threshold);
  $("meter-threshold").hidden = threshold === null;
  if (threshold !== null) $("meter-threshold").style.left = pos(threshold);
  $("meter-text").textContent = `level ${level.toFixed(0)} dBFS · ${text}`;
}

// --- sending and showing ----------------------------------------------------------------

async function send(blob, name, note = "") {
  const limit = state.model.limits.max_upload_bytes;
  if (blob.size > limit) {
    clearResult();
    status(`${name}: ${(blob.size / 2 ** 20).toFixed(1)} MB is over the server's limit of ${(limit / 2 ** 20).toFixed(0)} MB`, true);
    return;
  }
  state.busy += 1;
  if (state.mode !== "record") status(`labelling ${name}…`);
  try {
    const answer = await state.backend.label(blob, name, { display: true });
    answer.note = note;
    showResult(answer, blob);
    addHistory(answer);
    if (state.mode !== "listen") status(`${name}: ${headline(answer).label}${answer.windows.length > 1 ? "" : ` (${percent(answer.score)})`}`);
  } catch (e) {
    clearResult();  // an error never sits above the previous clip's result
    status(e.message, true);
  } finally {
    state.busy -= 1;
  }
}

function clearResult() {
  state.result = null;
  $("result").hidden = true;
  $("result-label").textContent = "";
  stopPlaying();
}

// A long recording's windows as detections: consecutive windows with the same top class (at
// least `threshold`; not silent, not "unknown"), joined as --merge_consecutive joins them.
export function detections(answer, threshold = 0) {
  const found = [];
  for (const w of answer.windows) {
    // the window's decision (w.label: "unknown" when the model's open-set threshold says no
    // class fits, or its _background_ class wins), with its class's score
    const label = w.label || w.top[0].label;
    const best = { label, score: (w.top.find((t) => t.label === label) || { score: 0 }).score };
    if (w.silent || best.score < threshold || NOT_DETECTIONS.has(label)) continue;
    const last = found[found.length - 1];
    if (last && last.label === best.label && w.start <= last.end + 1e-6) {
      last.end = Math.max(last.end, w.end);
      last.score = Math.max(last.score, best.score);
      last.windows += 1;
    } else {
      found.push({ label: best.label, start: w.start, end: w.end, score: best.score, windows: 1 });
    }
  }
  return found;
}

function headline(answer) {
  if (answer.windows.length < 2) return { label: answer.label, score: percent(answer.score) };
  const found = detections(answer);
  if (!found.length) return { label: "nothing detected", score: "every window is silent or unknown" };
  const confident = found.filter((d) => d.score >= CONFIDENT);
  const names = [...new Set((confident.length ? confident : found).map((d) => d.label))];
  const what = confident.length ? `${confident.length} detection${confident.length > 1 ? "s" : ""} of ${percent(CONFIDENT)} or more`
    : `no detection reaches ${percent(CONFIDENT)}`;
  return { label: names.join(", "), score: `${what} in ${seconds(answer.duration)}` };
}

function showResult(answer, blob) {
  stopPlaying();
  state.result = answer;
  state.blob = blob;
  state.audio = null;  // decoded on the first playback or cut
  state.images = {};
  $("result").hidden = false;
  const head = headline(answer);
  $("result-label").textContent = head.label;
  $("result-score").textContent = head.score;
  const n = answer.windows.length;
  $("result-source").textContent = [answer.source, seconds(answer.duration),
    n > 1 ? `${n} windows of ${seconds(answer.window_seconds)}` : null,
    answer.note || null, `${answer.elapsed_ms} ms`].filter(Boolean).join(" · ");
  const found = n > 1 ? detections(answer) : [];
  $("detections").replaceChildren(...found.map((d) => Object.assign(document.createElement("li"), {
    textContent: `${d.label} ${d.start.toFixed(2)}–${d.end.toFixed(2)} s (${percent(d.score)})`,
    className: d.score >= CONFIDENT ? "" : "muted",
  })));
  $("timeline-box").hidden = n < 2;
  const rows = $("windows").querySelector("tbody");
  rows.replaceChildren();
  answer.windows.forEach((w, i) => {
    const tr = document.createElement("tr");
    tr.dataset.index = i;
    if (w.silent) tr.classList.add("silent");
    const label = w.label || w.top[0].label;
    const cells = [`${w.start.toFixed(2)}–${w.end.toFixed(2)} s`, w.silent ? `${label} (silent)`
      : label === "unknown" ? `unknown (best: ${w.top[0].label})` : label];
    for (const text of cells) tr.append(Object.assign(document.createElement("td"), { textContent: text }));
    tr.append(scoreCell(w.top[0].score));
    const playCell = document.createElement("td");
    const button = Object.assign(document.createElement("button"), { type: "button", className: "small play-window",
                                                                      textContent: "▶", title: "play this window" });
    button.addEventListener("click", (e) => { e.stopPropagation(); selectWindow(i, true); playSpan(w.start, w.end); });
    playCell.append(button);
    tr.append(playCell);
    tr.addEventListener("click", () => selectWindow(i, true));
    rows.append(tr);
  });
  $("windows-box").hidden = n < 2;
  loadImage("clip", answer.clip_spectrogram && answer.clip_spectrogram.image).then(() => redraw());
  selectWindow(bestWindow(answer), false);
}

function loadImage(key, src) {
  if (!src) return Promise.resolve(null);
  if (state.images[key]) return Promise.resolve(state.images[key]);
  return new Promise((resolve) => {
    const image = new Image();
    image.onload = () => { state.images[key] = image; resolve(image); };
    image.onerror = () => resolve(null);
    image.src = src;
  });
}

function bestWindow(answer) {
  let best = 0, bestScore = -1;
  answer.windows.forEach((w, i) => {
    const s = (w.top.find((t) => t.label === answer.label) || { score: 0 }).score;
    if (!w.silent && s > bestScore) { best = i; bestScore = s; }
  });
  return best;
}

function redraw() {
  const answer = state.result;
  if (!answer) return;
  drawWaveform($("waveform"), answer, state.selected, state.playhead);
  drawClipSpectrogram($("clip-spectrogram"), answer, state.images.clip, state.selected, state.playhead);
  if (answer.windows.length > 1) drawTimeline($("timeline"), answer, timelineLabels(answer), state.selected, state.playhead);
}

function timelineLabels(answer) {
  const seen = new Set();
  for (const w of answer.windows) if (!w.silent) for (const t of w.top) if (t.score >= 0.1) seen.add(t.label);
  const labels = state.model.labels.filter((l) => seen.has(l));
  return labels.length ? labels : state.model.labels.slice(0, 5);
}

// The bars show the whole clip, or the window picked in the table (click again: the clip).
function selectWindow(i, fromTable) {
  const answer = state.result;
  const w = answer.windows[i];
  const again = fromTable && state.selected === i && state.barsForWindow;
  state.selected = i;
  state.barsForWindow = fromTable && !again;
  if (state.barsForWindow || answer.windows.length > 1) {
    fillBars($("top"), w.top);
    $("top-scope").textContent = `(window ${w.start.toFixed(2)}–${w.end.toFixed(2)} s)`;
  } else {
    fillBars($("top"), answer.top);
    $("top-scope").textContent = "";
  }
  for (const tr of $("windows").querySelectorAll("tbody tr")) tr.classList.toggle("selected", +tr.dataset.index === i);
  const img = $("spectrogram");
  const caption = $("spectrogram-caption");
  const size = state.model.image_size;
  const span = `window ${w.start.toFixed(2)}–${w.end.toFixed(2)} s`;
  const padded = w.end - w.start < answer.window_seconds - 1e-6
    ? `, padded to ${seconds(answer.window_seconds)} (${answer.pad_mode || "repeat"}) as in training` : "";
  if (w.spectrogram) {
    img.src = w.spectrogram;
    loadImage(`w${i}`, w.spectrogram).then((image) => { if (state.selected === i) drawWindowImage($("window-image"), answer, image, i); });
    $("window-figure").hidden = false;
    caption.textContent = answer.spectrogram_as_model_input
      ? `${span}${padded}: exactly what the model saw (${size}×${size})`
      : `${span}${padded} (this model takes the waveform; spectrogram for display)`;
  } else {
    img.removeAttribute("src");
    $("window-figure").hidden = !answer.clip_spectrogram;
    caption.textContent = `${span}${padded} (the model renders its spectrogram inside; not drawn here)`;
  }
  $("play-window").textContent = `▶ Window ${w.start.toFixed(2)}–${w.end.toFixed(2)} s`;
  $("review-window").hidden = answer.windows.length < 2 || !state.dataset;
  showReview();
  redraw();
}

// --- playback ------------------------------------------------------------------------------

async function decoded() {
  if (!state.audio) state.audio = await decodeBlob(state.blob);
  return state.audio;
}

async function playSpan(start, end) {
  try {
    const { y, sr } = await decoded();
    document.body.dataset.playing = `${start.toFixed(2)}-${end.toFixed(2)}`;
    await play(y, sr, start, end, (t) => { state.playhead = t; redraw(); });
  } catch (e) {
    status(`cannot play ${state.result ? state.result.source : "this"} in this browser: ${e.message}`, true);
  } finally {
    state.playhead = null;
    document.body.dataset.played = String(+(document.body.dataset.played || 0) + 1);
    delete document.body.dataset.playing;
    redraw();
  }
}

// --- review: one click adds a clip or window to the class it belongs to ---------------------

function showReview() {
  const box = $("review");
  box.hidden = !state.dataset;
  if (!state.dataset) return;
  const answer = state.result;
  const chosen = answer.windows[state.selected];
  const predicted = answer.windows.length > 1 ? (chosen.label || chosen.top[0].label) : answer.label;
  for (const [id, scope] of [["review-clip-buttons", "clip"], ["review-window-buttons", "window"]]) {
    const holder = $(id);
    holder.replaceChildren();
    // the project's classes, and the model's labels that have none (a click creates it)
    const classes = state.dataset.classes.map((c) => c.name);
    for (const label of state.model.labels) if (!api.classOfLabel(state.dataset, label) && label !== "_background_") classes.push(label);
    // the class the model says (a long clip has none: its windows say different things)
    let said = scope === "window" ? predicted : answer.windows.length > 1 ? null : answer.label;
    if (said === "unknown" || said === "_background_") said = null;
    const first = said === null ? null : api.classOfLabel(state.dataset, said) || said;
    const ordered = first ? [first, ...classes.filter((c) => c !== first)] : classes;
    for (const name of ordered) {
      const button = Object.assign(document.createElement("button"), { type: "button", className: "small add-to",
                                                                        textContent: `+ ${name}` });
      button.dataset.class = name;
      if (name === first) button.classList.add("predicted");
      button.addEventListener("click", () => addToClass(scope, name));
      holder.append(button);
    }
  }
}

async function addToClass(scope, name) {
  const answer = state.result;
  const stem = (answer.source || "clip").replace(/\.[^.]+$/, "");
  try {
    let blob = state.blob, filename = answer.source || "clip.wav";
    if (scope === "window") {
      const w = answer.windows[state.selected];
      const { y, sr } = await decoded();
      blob = spanWav(y, sr, w.start, w.end);
      // windows of one recording share its name: train keeps them on one side of a split
      filename = `${stem}_nohash_${w.start.toFixed(2).replace(".", "s")}.wav`;
    }
    const stored = await api.addClip(name, blob, filename);
    status(`added ${stored.id} to ${stored.class}`);
    await refreshDataset();
  } catch (e) {
    status(e.message, true);
  }
}

async function refreshDataset() {
  if (!state.studio) return;
  state.dataset = await api.dataset();
  state.studio.showDataset(state.dataset);
  if (state.result) showReview();
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
    headline: answer.windows.length > 1 ? headline(answer) : undefined,  // a long file: its detections, not the mean
    detections: answer.windows.length > 1 ? detections(answer) : undefined,
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
    const next = h.headline ? "" : h.top.slice(1, 3).map((t) => `${t.label} ${percent(t.score)}`).join(", ");
    const label = h.headline ? h.headline.label : h.top[0].label;
    const score = h.headline ? h.headline.score : percent(h.top[0].score);
    for (const text of [new Date(h.time).toLocaleTimeString(), h.clip, seconds(h.duration), label, score, next]) {
      tr.append(Object.assign(document.createElement("td"), { textContent: text }));
    }
    rows.append(tr);
  }
  $("download-csv").disabled = $("clear-history").disabled = !state.history.length;
}

function csvCell(value) {
  const s = String(value);
  return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

// One row per clip: its label and score (a long recording: the classes detected in it, the
// best detection's score, and each detection in `detections`), then the next best labels.
export function historyCsv(history) {
  const k = Math.max(1, ...history.map((h) => h.top.length));
  const header = ["time", "model", "clip", "duration_s", "windows", "label", "score"];
  for (let i = 2; i <= k; i++) header.push(`label_${i}`, `score_${i}`);
  header.push("detections");
  const lines = [header.join(",")];
  for (const h of history) {
    const row = [h.time, h.model || "", h.clip, h.duration, h.windows];
    if (h.headline) {
      const found = h.detections || [];
      row.push(h.headline.label, found.length ? Math.max(...found.map((d) => d.score)) : "");
      for (let i = 1; i < k; i++) row.push("", "");
      row.push(found.map((d) => `${d.label} ${d.start.toFixed(2)}-${d.end.toFixed(2)} s ${d.score}`).join("; "));
    } else {
      for (let i = 0; i < k; i++) row.push(h.top[i] ? h.top[i].label : "", h.top[i] ? h.top[i].score : "");
      row.push("");
    }
    lines.push(row.map(csvCell).join(","));
  }
  return lines.join("\n") + "\n";
}

function download(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = Object.assign(document.createElement("a"), { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// --- files: choose or drop ---------------------------------------------------------------

function sendFiles(files) {
  for (const file of files) send(file, file.name);
}

// A file dropped on the page is labelled (once: one listener, on the document); the studio's
// drop targets (a class, the importer) stop the event before it gets here.
function setUpDropzone() {
  const zone = $("dropzone");
  const highlight = (on) => (e) => { e.preventDefault(); zone.classList.toggle("over", on); };
  document.addEventListener("dragover", highlight(true));
  document.addEventListener("dragleave", highlight(false));
  document.addEventListener("drop", (e) => {
    highlight(false)(e);
    if (e.dataTransfer && e.dataTransfer.files.length) {
      if (state.model.model === null) { status("no model yet: drop files on a class in Collect, then train", true); return; }
      showTab("use");
      sendFiles(e.dataTransfer.files);
    }
  });
}

function clock(date) {
  return date.toTimeString().slice(0, 8).replace(/:/g, "-");
}

// --- tabs and start ---------------------------------------------------------------------

function showTab(name) {
  for (const tab of document.querySelectorAll("#tabs [data-tab]")) {
    const on = tab.dataset.tab === name;
    tab.setAttribute("aria-selected", String(on));
    $(`panel-${tab.dataset.tab}`).hidden = !on;
  }
  document.body.dataset.tab = name;
  if (name === "use" && state.result) requestAnimationFrame(redraw);
  if (state.studio) state.studio.shown(name);
}

function showModel() {
  const m = state.model;
  const has = m.model !== null && m.model !== undefined;
  if (has) {
    const accuracy = typeof m.test_accuracy === "number" ? `test accuracy ${percent(m.test_accuracy)}`
      : m.project && typeof m.project.accuracy === "number" ? `${m.project.evaluation || "evaluated"} accuracy ${percent(m.project.accuracy)}`
      : "test accuracy not recorded";
    $("model-info").textContent = `${m.model} · ${m.labels.length} labels (${m.labels.join(", ")}) · ${accuracy} · `
      + `${m.sample_rate} Hz, ${seconds(m.window_seconds)} windows`;
    document.title = `${m.model}: what is this sound?`;
  } else {
    $("model-info").textContent = `project ${m.project ? m.project.name : ""}: no model yet · collect clips of at least `
      + `2 classes, then train · clips of ${seconds(recordSeconds())}`;
  }
  $("no-model").hidden = has;
  const mic = micAvailable();
  for (const id of ["record", "listen", "live"]) $(id).disabled = !has || !mic;
  $("file").disabled = !has;
  if (!mic) {
    const why = window.isSecureContext ? "this browser cannot record" : "the microphone needs https or localhost";
    $("record").title = $("listen").title = $("live").title = why;
    status(`${why}; uploading files works`);
  }
}

async function refreshModel() {
  state.model = await state.backend.model();
  showModel();
}

async function main() {
  try {
    state.backend = await createBackend();
    state.model = await state.backend.model();
  } catch (e) {
    $("model-info").textContent = `cannot load the model description: ${e.message}`;
    return;
  }
  if (state.model.runs_in) $("runs-in").textContent = state.model.runs_in;
  if (state.backend.kind === "server") {
    try { state.dataset = await api.dataset(); } catch { state.dataset = null; }
  }
  if (state.dataset) {
    $("tabs").hidden = false;
    document.querySelector("h1").textContent = `Sound studio: ${state.dataset.project}`;
    state.studio = startStudio({
      status, refreshModel, showTab, dataset: () => state.dataset, setDataset: (d) => { state.dataset = d; if (state.result) showReview(); },
      recordSeconds, model: () => state.model, download,
    });
    state.studio.showDataset(state.dataset);
  }
  showModel();
  $("record").addEventListener("click", toggleRecord);
  $("listen").addEventListener("click", toggleListen);
  $("live").addEventListener("click", toggleLive);
  $("file").addEventListener("change", (e) => { sendFiles(e.target.files); e.target.value = ""; });
  $("play-clip").addEventListener("click", () => state.result && playSpan(0, state.result.duration));
  $("play-window").addEventListener("click", () => {
    const w = state.result && state.result.windows[state.selected];
    if (w) playSpan(w.start, w.end);
  });
  $("stop-playing").addEventListener("click", () => stopPlaying());
  $("download-csv").addEventListener("click", () => download(new Blob([historyCsv(state.history)], { type: "text/csv" }),
                                                             `soundretrain-labels-${clock(new Date())}.csv`));
  $("clear-history").addEventListener("click", () => { state.history = []; saveHistory(); showHistory(); });
  for (const tab of document.querySelectorAll("#tabs [data-tab]")) tab.addEventListener("click", () => showTab(tab.dataset.tab));
  window.addEventListener("resize", () => redraw());
  setUpDropzone();
  showHistory();
  showTab(state.dataset && state.model.model === null ? "collect" : "use");
  document.body.dataset.ready = "true";
}

main();
