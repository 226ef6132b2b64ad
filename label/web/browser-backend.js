// The in-browser back-end (backend.js): the audio-in model as a TF.js graph model, run here.
// decode -> average channels -> resample to the model's rate -> windows exactly as
// label_image cuts them -> the model, BATCH windows per call -> the JSON of POST /v1/label
// (summary = mean of the non-silent windows). TF.js is vendored beside the page (vendor/,
// from npm at build time) and loaded only by this back-end.
import { decodeAudio, isSilent, resample, splitWindows, waveformEnvelope } from "./browser-audio.js";

const BATCH = 8;
const BACKENDS = ["wasm", "webgl", "cpu"];  // tried in this order; ?backend=NAME picks one

function loadScript(url) {
  return new Promise((resolve, reject) => {
    const script = Object.assign(document.createElement("script"), { src: url, async: false });
    script.onload = resolve;
    script.onerror = () => reject(new Error(`cannot load ${url.pathname || url} (run make install: it vendors TF.js)`));
    document.head.append(script);
  });
}

async function loadTfjs(vendor) {
  if (!window.tf) await loadScript(new URL("tf.min.js", vendor));
  if (!window.tf.wasm) await loadScript(new URL("tf-backend-wasm.min.js", vendor));
  window.tf.wasm.setWasmPaths(vendor.href);
  return window.tf;
}

const round = (x, digits) => Math.round(x * 10 ** digits) / 10 ** digits;

// label.labeling.top_k: best first, ties by class index (numpy's stable argsort).
function topK(probabilities, labels, k) {
  const order = labels.map((_, i) => i).sort((a, b) => probabilities[b] - probabilities[a] || a - b);
  return order.slice(0, k).map((i) => ({ label: labels[i], score: round(probabilities[i], 6) }));
}

// TF.js and its back-end, set up once per page (a second create, e.g. a script's, shares it).
let started = null;

async function startTfjs(vendor) {
  const tf = await loadTfjs(vendor);
  const wanted = new URLSearchParams(location.search).get("backend");
  for (const name of wanted ? [wanted] : BACKENDS) {
    try {
      if (await tf.setBackend(name)) { await tf.ready(); return { tf, chosen: name }; }
    } catch { /* not available here: the next one */ }
  }
  throw new Error(`no TF.js back-end runs here (tried ${wanted || BACKENDS.join(", ")})`);
}

export class BrowserBackend {
  static async create(configUrl) {
    const response = await fetch(configUrl);
    if (!response.ok) throw new Error(`cannot read ${configUrl.pathname}: HTTP ${response.status}`);
    const config = await response.json();
    started = started || startTfjs(new URL(config.vendor || "vendor/", configUrl));
    const { tf, chosen } = await started;
    const model = await tf.loadGraphModel(new URL(config.model, configUrl).href);
    return new BrowserBackend(tf, model, config, chosen);
  }

  constructor(tf, model, config, tfBackend) {
    this.kind = "browser";
    this.tf = tf;
    this.net = model;
    this.config = config;
    this.tfBackend = tfBackend;
    const side = (model.metadata && model.metadata.soundretrain) || config.sidecar;
    if (!side || !side.input || side.input.kind !== "waveform") {
      throw new Error("this model does not take sound (export it with retrain --output_tfjs)");
    }
    this.sidecar = side;
    this.labels = side.labels;
    this.sr = side.input.sample_rate;
    this.n = side.input.num_samples;
    this.hop = side.input.hop_samples;
    this.padMode = side.input.pad_mode || "repeat";
  }

  async model() {
    const s = this.sidecar, c = this.config;
    return {
      model: c.model_name, format: "tfjs", labels: this.labels, sample_rate: this.sr, sample_rates: [this.sr],
      window_seconds: this.n / this.sr, hop_seconds: this.hop / this.sr, test_accuracy: s.test_accuracy ?? null,
      module: (s.module || {}).name || null, input_kind: "waveform",
      image_size: (s.spectrogram || {}).image_size || null, top_k: c.top_k, pool_size: 1, limits: c.limits,
      trigger: c.trigger, backend: "browser", tfjs_backend: this.tfBackend,
      runs_in: `Runs entirely in this browser (TF.js, ${this.tfBackend} back-end): no sound leaves this device.`,
    };
  }

  // The probabilities [windows][classes] of equal-length windows, BATCH per model call.
  async predict(windows) {
    const tf = this.tf;
    const out = [];
    for (let i = 0; i < windows.length; i += BATCH) {
      const part = windows.slice(i, i + BATCH);
      const batch = new Float32Array(part.length * this.n);
      part.forEach((w, j) => batch.set(w, j * this.n));
      const x = tf.tensor2d(batch, [part.length, this.n]);
      // executeAsync: graphs with control flow (a tf.cond in a module's front-end) need it
      const y = await this.net.executeAsync(x);
      out.push(...(await y.array()));
      tf.dispose([x, y]);
    }
    return out;
  }

  async label(blob, name, { display = true, topK: k } = {}) {
    const started = performance.now();
    const c = this.config;
    if (!blob.size) throw new Error("empty upload: send the audio file's bytes as the request body");
    if (blob.size > c.limits.max_upload_bytes) {
      throw new Error(`upload too large: the limit is ${c.limits.max_upload_bytes / 2 ** 20} MB`);
    }
    k = Math.min(k === undefined ? c.top_k : k, this.labels.length);
    if (!(k >= 1)) throw new Error(`top_k must be at least 1, not ${k}`);
    let decoded;
    try {
      decoded = await decodeAudio(await blob.arrayBuffer(), this.sr);
    } catch (e) {
      throw new Error(`${name}: ${e.message}`);
    }
    if (!decoded.y.length) throw new Error(`${name}: no audio samples (zero-length clip)`);
    const seconds = decoded.y.length / decoded.sr;
    if (seconds > c.limits.max_seconds) {
      throw new Error(`${name}: ${seconds.toFixed(1)} s of audio is longer than the limit of ${c.limits.max_seconds} s`);
    }
    for (const v of decoded.y) if (!Number.isFinite(v)) throw new Error(`${name}: audio contains NaN or infinite samples`);
    const y = resample(decoded.y, decoded.sr, this.sr);
    if (isSilent(y)) throw new Error(`${name}: the audio is silent (nothing to label)`);
    const windows = splitWindows(y, this.sr, this.n, this.hop, this.padMode);
    const probabilities = await this.predict(windows.map((w) => w.y));
    const silent = windows.map((w) => isSilent(w.y));
    const keep = silent.some((s) => !s) ? silent.map((s) => !s) : silent.map(() => true);
    const mean = new Float64Array(this.labels.length);
    let count = 0;
    probabilities.forEach((p, i) => { if (keep[i]) { count += 1; p.forEach((v, j) => { mean[j] += v; }); } });
    const summary = Array.from(mean, (v) => v / count);
    const duration = round(y.length / this.sr, 3), windowSeconds = this.n / this.sr;
    const top = topK(summary, this.labels, k);
    const answer = {
      source: name, kind: "audio", top,
      windows: windows.map((w, i) => ({
        start: round(w.start, 3), silent: silent[i], top: topK(probabilities[i], this.labels, k),
        end: round(Math.min(round(w.start, 3) + windowSeconds, Math.max(duration, windowSeconds)), 3),
      })),
      label: top[0].label, score: top[0].score, duration, window_seconds: windowSeconds,
    };
    if (display) {
      answer.waveform = waveformEnvelope(y);
      answer.spectrogram_as_model_input = false;  // no picture: the model renders it inside
    }
    answer.elapsed_ms = round(performance.now() - started, 1);
    return answer;
  }
}
