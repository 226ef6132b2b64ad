// Audio for the in-browser back-end, as label_image prepares it (soundretrain/audio.py):
// decode at the file's own rate, average the channels, resample to the model's rate, cut
// windows with split_windows' rule, refuse silence. Pure functions, no TF.js.

export const SILENCE_PEAK = 1e-4;  // soundretrain.audio.SILENCE_PEAK: -80 dBFS

// --- the file's own sample rate, from its header ------------------------------------------
// decodeAudioData resamples to its context's rate, so the page decodes at the file's own
// rate and resamples itself (as label_image does after libsndfile). null: unknown format
// (the browser then resamples to the model's rate while decoding).
export function nativeSampleRate(bytes) {
  const b = new Uint8Array(bytes);
  const view = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const tag = (at, s) => at + s.length <= b.length && [...s].every((c, i) => b[at + i] === c.charCodeAt(0));
  try {
    if (tag(0, "RIFF") && tag(8, "WAVE")) {  // chunks after the 12-byte header; "fmt " holds the rate
      for (let at = 12; at + 8 <= b.length;) {
        const size = view.getUint32(at + 4, true);
        if (tag(at, "fmt ")) return view.getUint32(at + 12, true);
        at += 8 + size + (size % 2);
      }
      return null;
    }
    if (tag(0, "fLaC")) return (b[18] << 12) | (b[19] << 4) | (b[20] >> 4);  // STREAMINFO, bits 80-99
    if (tag(0, "OggS")) {
      const body = 27 + b[26];  // page header, then its segment table
      if (tag(body, "OpusHead")) return 48000;  // Opus always decodes at 48 kHz
      if (b[body] === 1 && tag(body + 1, "vorbis")) return view.getUint32(body + 12, true);
      return null;
    }
    if (tag(0, "FORM") && (tag(8, "AIFF") || tag(8, "AIFC"))) {
      for (let at = 12; at + 8 <= b.length;) {
        const size = view.getUint32(at + 4, false);
        if (tag(at, "COMM")) {  // 80-bit extended float at byte 8 of the chunk body
          const e = ((b[at + 16] & 0x7f) << 8 | b[at + 17]) - 16383;
          return Math.round(view.getUint32(at + 18, false) * 2 ** (e - 31));
        }
        at += 8 + size + (size % 2);
      }
      return null;
    }
    return mp3SampleRate(b);
  } catch {
    return null;
  }
}

function mp3SampleRate(b) {
  let at = 0;
  if (b[0] === 0x49 && b[1] === 0x44 && b[2] === 0x33) {  // "ID3" tag: syncsafe size
    at = 10 + ((b[6] & 0x7f) << 21 | (b[7] & 0x7f) << 14 | (b[8] & 0x7f) << 7 | (b[9] & 0x7f));
  }
  for (const end = Math.min(b.length - 3, at + 65536); at < end; at++) {
    if (b[at] !== 0xff || (b[at + 1] & 0xe0) !== 0xe0) continue;
    const version = (b[at + 1] >> 3) & 3, layer = (b[at + 1] >> 1) & 3, index = (b[at + 2] >> 2) & 3;
    if (version === 1 || layer === 0 || index === 3) continue;
    const base = [44100, 48000, 32000][index];
    return version === 3 ? base : version === 2 ? base / 2 : base / 4;  // MPEG 1, 2, 2.5
  }
  return null;
}

// --- decoding ----------------------------------------------------------------------------

// -> {y: Float32Array (channels averaged), sr}. Throws Error("cannot decode audio: ...").
export async function decodeAudio(bytes, fallbackRate) {
  const rate = nativeSampleRate(bytes);
  const sr = rate && rate >= 3000 && rate <= 768000 ? rate : fallbackRate;
  const context = new OfflineAudioContext(1, 1, sr);
  let buffer;
  try {
    buffer = await context.decodeAudioData(bytes.slice(0));
  } catch (e) {
    throw new Error(`cannot decode audio: ${e && e.message ? e.message.split("\n")[0] : "not a readable audio file"}`);
  }
  const channels = buffer.numberOfChannels;
  const y = new Float32Array(buffer.length);
  if (channels === 1) {
    y.set(buffer.getChannelData(0));
  } else {
    const data = Array.from({ length: channels }, (_, c) => buffer.getChannelData(c));
    for (let i = 0; i < y.length; i++) {
      let sum = 0;
      for (let c = 0; c < channels; c++) sum += data[c][i];
      y[i] = sum / channels;
    }
  }
  return { y, sr: buffer.sampleRate };
}

// --- resampling --------------------------------------------------------------------------
// A Kaiser-windowed sinc, evaluated at each output sample's time in the input (so sample 0
// stays at t = 0, as soxr keeps it): 64 zero crossings each side, cut-off at 94.76 % of the
// lower Nyquist frequency, beta 14.77 (resampy's "kaiser_best"). Output length
// ceil(n * target / sr), as soundretrain.audio.to_sample_rate. Not soxr bit for bit: both
// are flat to well under 0.01 dB below the cut-off, so the model sees the same sound.
const ZEROS = 64, ROLLOFF = 0.9475937167399596, BETA = 14.769656459379492;

function besselI0(x) {
  let sum = 1, term = 1;
  for (let k = 1; k < 60; k++) {
    term *= (x / (2 * k)) ** 2;
    sum += term;
    if (term < sum * 1e-17) break;
  }
  return sum;
}

const gcd = (a, b) => (b ? gcd(b, a % b) : a);

export function resample(y, sr, target) {
  if (sr === target) return y;
  const g = gcd(sr, target), up = target / g, down = sr / g;
  const n = Math.ceil((y.length * target) / sr);
  const fc = 0.5 * Math.min(1, target / sr) * ROLLOFF;  // cut-off, cycles per input sample
  const half = ZEROS / (2 * fc);  // the filter's half width in input samples
  const taps = Math.ceil(half);
  const i0Beta = besselI0(BETA);
  const h = (x) => {  // the filter at distance x (input samples)
    if (Math.abs(x) >= half) return 0;
    const r = x / half;
    const sinc = x === 0 ? 1 : Math.sin(2 * Math.PI * fc * x) / (2 * Math.PI * fc * x);
    return 2 * fc * sinc * besselI0(BETA * Math.sqrt(1 - r * r)) / i0Beta;
  };
  // One table of 2 * taps + 1 weights per phase (up phases), when that stays small.
  const width = 2 * taps + 1;
  const table = up * width <= 2_000_000 ? new Float64Array(up * width) : null;
  if (table) {
    for (let p = 0; p < up; p++) {
      const frac = p / up;
      for (let j = 0; j < width; j++) table[p * width + j] = h(j - taps - frac);
    }
  }
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const position = i * down;  // input time i * down / up, as an integer numerator
    const base = Math.floor(position / up), phase = position - base * up;
    let sum = 0;
    const first = Math.max(0, base - taps), last = Math.min(y.length - 1, base + taps);
    if (table) {
      const row = phase * width - (base - taps);
      for (let k = first; k <= last; k++) sum += y[k] * table[row + k];
    } else {
      const t = base + phase / up;
      for (let k = first; k <= last; k++) sum += y[k] * h(k - t);
    }
    out[i] = sum;
  }
  return out;
}

// --- windows (soundretrain.audio.split_windows) ------------------------------------------

export function isSilent(y) {
  let peak = 0;
  for (let i = 0; i < y.length; i++) { const v = Math.abs(y[i]); if (v > peak) peak = v; }
  return y.length === 0 || peak < SILENCE_PEAK;
}

// fit_duration: the first n samples, or the clip repeated (padMode "repeat") / zero padded.
export function fitDuration(y, n, padMode) {
  if (y.length >= n) return y.slice(0, n);
  const out = new Float32Array(n);
  if (y.length === 0 || padMode === "zero") { out.set(y); return out; }
  for (let at = 0; at < n; at += y.length) out.set(y.subarray(0, Math.min(y.length, n - at)), at);
  return out;
}

// -> [{start (seconds), y}]: windows of n samples every hop, one more aligned to the end
// when a tail remains; a clip no longer than a window gives one padded window.
export function splitWindows(y, sr, n, hop, padMode) {
  if (y.length <= n) return [{ start: 0, y: fitDuration(y, n, padMode) }];
  const starts = [];
  for (let s = 0; s <= y.length - n; s += hop) starts.push(s);
  if (starts[starts.length - 1] + n < y.length) starts.push(y.length - n);
  return starts.map((s) => ({ start: s / sr, y: y.subarray(s, s + n) }));
}

// label.serve.waveform_envelope: min/max of `points` buckets.
export function waveformEnvelope(y, points = 1000) {
  const n = y.length, k = Math.max(1, Math.min(points, n));
  const min = [], max = [];
  for (let b = 0; b < k; b++) {
    const from = Math.floor((b * n) / k), to = Math.max(from + 1, Math.floor(((b + 1) * n) / k));
    let lo = Infinity, hi = -Infinity;
    for (let i = from; i < to; i++) { if (y[i] < lo) lo = y[i]; if (y[i] > hi) hi = y[i]; }
    min.push(+lo.toFixed(4));
    max.push(+hi.toFixed(4));
  }
  return { min, max };
}
