// The energy trigger of label/mic.py (detect_events, EnergyTrigger, level_db), line for
// line, so "listen continuously" in the page finds the events `label_image --mic` would.
// Every number comes from GET /v1/model's "trigger" (label.mic.trigger_parameters).
// tests/test_label_serve_browser.py runs both on the same samples and compares.

// Python's round(): half to even (Math.round rounds half up).
export function pyRound(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

// RMS level of a block in dBFS; p.silence_db for digital silence.
export function levelDb(block, p) {
  if (!block.length) return p.silence_db;
  let sum = 0;
  for (let i = 0; i < block.length; i++) sum += block[i] * block[i];
  const rms = Math.sqrt(sum / block.length);
  return rms > p.silence_rms ? 20 * Math.log10(rms) : p.silence_db;
}

// The adaptive noise floor: an exponential moving average of the level, slower by
// p.loud_slowdown while a block is loud, never below p.min_floor_db.
export class EnergyTrigger {
  constructor(p) {
    this.p = p;
    this.floorDb = null;
    this.alpha = Math.min(1, p.block_seconds / p.adapt_seconds);
  }
  get thresholdDb() {
    return (this.floorDb !== null ? this.floorDb : this.p.min_floor_db) + this.p.trigger_db;
  }
  isLoud(level) {
    return this.floorDb !== null && level > this.thresholdDb;
  }
  update(level) {
    if (this.floorDb === null) {
      this.floorDb = Math.max(level, this.p.min_floor_db);
      return;
    }
    const alpha = this.isLoud(level) ? this.alpha / this.p.loud_slowdown : this.alpha;
    this.floorDb = Math.max(this.p.min_floor_db, this.floorDb + alpha * (level - this.floorDb));
  }
}

function concat(blocks) {
  const out = new Float32Array(blocks.reduce((n, b) => n + b.length, 0));
  let at = 0;
  for (const b of blocks) { out.set(b, at); at += b.length; }
  return out;
}

// detect_events as a push API: feed blocks of `frames` samples; push() returns the
// event whose recording it completes ({start, y, sr, levelDb, floorDb}) or null.
export class EventDetector {
  constructor(p, sampleRate) {
    this.p = p;
    this.sr = sampleRate;
    this.frames = Math.max(1, pyRound(p.block_seconds * sampleRate));
    this.prerollMax = Math.max(1, pyRound(p.preroll_seconds / p.block_seconds));
    this.need = pyRound(p.record_seconds * sampleRate);
    this.trigger = new EnergyTrigger(p);
    this.armed = true;
    this.preroll = [];
    this.recording = null;
    this.event = null;
    this.recorded = 0;
    this.position = 0;
    this.level = p.silence_db;
  }
  get isRecording() { return this.recording !== null; }

  push(block) {
    const level = levelDb(block, this.p);
    this.level = level;
    let done = null;
    if (this.recording !== null) {
      this.recording.push(block);
      this.recorded += block.length;
      if (this.recorded >= this.need) {
        this.event.y = concat(this.recording);
        done = this.event;
        this.recording = null;
      }
    } else {
      const loud = this.trigger.isLoud(level);
      if (loud && this.armed) {
        this.event = { start: this.position / this.sr, wallTime: new Date(), y: null, sr: this.sr,
                       levelDb: level, floorDb: this.trigger.floorDb };
        this.recording = [...this.preroll, block];
        this.recorded = block.length;
        this.armed = false;
        this.preroll = [];
      } else {
        this.armed = this.armed || !loud;
        this.preroll.push(block);
        if (this.preroll.length > this.prerollMax) this.preroll.shift();
      }
    }
    this.trigger.update(level);
    this.position += block.length;
    return done;
  }

  // The end of the stream: a recording cut short is still an event (as in Python).
  finish() {
    if (this.recording === null) return null;
    this.event.y = concat(this.recording);
    this.recording = null;
    return this.event;
  }
}

// Re-blocks a stream of arbitrary chunks into blocks of exactly `frames` samples.
export class Reblocker {
  constructor(frames) { this.frames = frames; this.buf = new Float32Array(frames); this.fill = 0; }
  *push(chunk) {
    let at = 0;
    while (at < chunk.length) {
      const n = Math.min(this.frames - this.fill, chunk.length - at);
      this.buf.set(chunk.subarray(at, at + n), this.fill);
      this.fill += n;
      at += n;
      if (this.fill === this.frames) {
        yield this.buf;
        this.buf = new Float32Array(this.frames);
        this.fill = 0;
      }
    }
  }
}

// Every event of a whole signal (the tests' entry point; mirrors list(detect_events(...))).
export function detectEvents(samples, sampleRate, p) {
  const d = new EventDetector(p, sampleRate);
  const events = [];
  for (let i = 0; i < samples.length; i += d.frames) {
    const e = d.push(Float32Array.from(samples.slice(i, i + d.frames)));
    if (e) events.push(e);
  }
  const last = d.finish();
  if (last) events.push(last);
  return events;
}
