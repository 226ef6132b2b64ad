// Sound in the page: the microphone (an AudioWorklet), decoding a file to samples, playing
// any span of it, and cutting spans out as WAV files. No server involved.
import { encodeWav } from "./wav.js";

export function micAvailable() {
  return !!(navigator.mediaDevices && navigator.mediaDevices.getUserMedia && window.AudioWorkletNode);
}

// getUserMedia -> AudioWorklet ("capture") -> onChunk(Float32Array) on this thread.
export class Capture {
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

// A microphone kept open between recordings: opening one takes a moment (permission, an
// AudioContext, the worklet) and some devices start each stream with silence, or, like
// Chromium's file-backed fake device, from the same place, so clip after clip would begin
// alike. It closes `idleMs` after the last recording ends, or when close() is called;
// onChange(open) hears each opening and closing.
export class WarmMicrophone {
  constructor(idleMs = 120000, onChange = () => {}) {
    this.idleMs = idleMs;
    this.onChange = onChange;
    this.capture = null;
    this.opening = null;
    this.listener = null;
    this.timer = null;
  }
  // Resolves to the sample rate once chunks from now on go to onChunk(chunk, sr).
  async acquire(onChunk) {
    clearTimeout(this.timer);
    if (!this.capture) {
      const capture = new Capture();
      this.capture = capture;
      this.opening = capture.start((chunk) => {
        if (this.capture === capture && this.listener) this.listener(chunk, capture.rate);
      }).then((sr) => {
        // closed while it opened: let the device go at once
        if (this.capture !== capture) { capture.stop(); throw new Error("the recording was stopped"); }
        this.onChange(true);
        return sr;
      }, (e) => {
        if (this.capture === capture) this.close();
        throw e;
      });
    }
    const rate = await this.opening;
    this.listener = onChunk;
    return rate;
  }
  release() {
    this.listener = null;
    clearTimeout(this.timer);
    if (this.capture) this.timer = setTimeout(() => this.close(), this.idleMs);
  }
  close() {
    clearTimeout(this.timer);
    this.listener = null;
    if (!this.capture) return;
    this.capture.stop();
    this.capture = this.opening = null;
    this.onChange(false);
  }
}

// Record `seconds` from the microphone (or until stop() is called): resolves to {y, sr}.
// onProgress(recordedSeconds) is called as chunks arrive. With a WarmMicrophone the device
// stays open afterwards; without one it is opened for this recording and closed after it.
export function recordFor(seconds, onProgress = () => {}, mic = null) {
  const source = mic || new WarmMicrophone(0);
  const chunks = [];
  let total = 0;
  let rate = 0;
  let finish;
  const done = new Promise((resolve, reject) => {
    finish = (error) => {
      if (mic) mic.release(); else source.close();
      if (error) { reject(error); return; }
      const sr = rate || 48000;
      const y = new Float32Array(Math.min(total, Math.round(seconds * sr)));  // chunks overshoot
      let at = 0;
      for (const c of chunks) {
        if (at >= y.length) break;
        y.set(c.subarray(0, y.length - at), at);
        at += c.length;
      }
      resolve({ y, sr });
    };
  });
  let finished = false;
  const stop = (error) => { if (!finished) { finished = true; finish(error); } };
  source.acquire((chunk, sr) => {
    if (finished) return;
    rate = sr;
    chunks.push(chunk);
    total += chunk.length;
    onProgress(total / sr);
    if (total >= seconds * sr) stop();
  }).catch((e) => stop(new Error(`cannot use the microphone: ${e.message || e.name}`)));
  return { done, stop: () => stop() };
}

let playbackContext = null;
let playing = null;

function context() {
  if (!playbackContext) playbackContext = new AudioContext();
  return playbackContext;
}

// A file (Blob) -> {y: mono Float32Array, sr}; decodeAudioData resamples to the context's rate.
export async function decodeBlob(blob) {
  const buffer = await context().decodeAudioData(await blob.arrayBuffer());
  const y = new Float32Array(buffer.length);
  for (let c = 0; c < buffer.numberOfChannels; c++) {
    const channel = buffer.getChannelData(c);
    for (let i = 0; i < y.length; i++) y[i] += channel[i] / buffer.numberOfChannels;
  }
  return { y, sr: buffer.sampleRate };
}

// Samples from `start` to `end` seconds (clamped to the signal).
export function span(y, sr, start, end) {
  const a = Math.max(0, Math.floor(start * sr));
  const b = Math.min(y.length, Math.ceil(end * sr));
  return y.subarray(a, Math.max(a, b));
}

export function spanWav(y, sr, start, end) {
  return encodeWav(span(y, sr, start, end), sr);
}

// Play y[start..end] (seconds); onTime(t) follows the playhead; resolves when it ends or
// another playback starts. One sound at a time.
export function play(y, sr, start = 0, end = y.length / sr, onTime = () => {}) {
  stopPlaying();
  const ctx = context();
  const part = span(y, sr, start, end);
  if (!part.length) return Promise.resolve();
  const buffer = ctx.createBuffer(1, part.length, sr);
  buffer.copyToChannel(part, 0);
  const source = ctx.createBufferSource();
  source.buffer = buffer;
  source.connect(ctx.destination);
  return new Promise((resolve) => {
    const begun = ctx.currentTime;
    let frame = 0;
    const tick = () => {
      onTime(Math.min(end, start + (ctx.currentTime - begun)));
      frame = requestAnimationFrame(tick);
    };
    const finish = () => { cancelAnimationFrame(frame); onTime(null); if (playing && playing.source === source) playing = null; resolve(); };
    source.onended = finish;
    playing = { source, finish };
    ctx.resume().then(() => { source.start(); tick(); });
  });
}

export function stopPlaying() {
  if (!playing) return;
  const { source, finish } = playing;
  playing = null;
  try { source.stop(); } catch { /* not started */ }
  finish();
}
