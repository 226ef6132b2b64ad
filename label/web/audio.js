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

// Record `seconds` from the microphone (or until stop() is called): resolves to {y, sr}.
// onProgress(recordedSeconds) is called as chunks arrive.
export function recordFor(seconds, onProgress = () => {}) {
  const capture = new Capture();
  const chunks = [];
  let total = 0;
  let finish;
  const done = new Promise((resolve, reject) => {
    finish = (error) => {
      capture.stop();
      if (error) { reject(error); return; }
      const rate = capture.rate || 48000;
      const y = new Float32Array(Math.min(total, Math.round(seconds * rate)));  // chunks overshoot
      let at = 0;
      for (const c of chunks) {
        if (at >= y.length) break;
        y.set(c.subarray(0, y.length - at), at);
        at += c.length;
      }
      resolve({ y, sr: rate });
    };
  });
  let finished = false;
  const stop = (error) => { if (!finished) { finished = true; finish(error); } };
  capture.start((chunk) => {
    if (finished) return;
    chunks.push(chunk);
    total += chunk.length;
    onProgress(total / capture.rate);
    if (total >= seconds * capture.rate) stop();
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
