// Live classification: the microphone's last `window` seconds, labelled again every `hop`
// seconds (a sliding window), one request at a time (a slow model skips hops, never queues
// them). onResult(answer, windowEnd) gets each answer; onLevel(dBFS) each chunk's level.
import { Capture } from "./audio.js";
import { encodeWav } from "./wav.js";

export class LiveClassifier {
  constructor(backend, { window, hop, onResult, onLevel = () => {}, onError = () => {} }) {
    this.backend = backend;
    this.window = window;
    this.hop = hop;
    this.onResult = onResult;
    this.onLevel = onLevel;
    this.onError = onError;
    this.capture = null;
    this.busy = false;
    this.count = 0;
  }

  async start() {
    const capture = new Capture();
    this.capture = capture;
    let ring = null, fill = 0, heard = 0, nextAt = 0;
    await capture.start((chunk) => {
      if (this.capture !== capture) return;
      const sr = capture.rate;
      if (!ring) {
        ring = new Float32Array(Math.round(this.window * sr));
        nextAt = ring.length;  // the first full window
      }
      for (let i = 0; i < chunk.length; i += ring.length) {  // keep the newest samples
        const part = chunk.subarray(i, i + ring.length);
        if (fill + part.length <= ring.length) {
          ring.set(part, fill);
          fill += part.length;
        } else {
          const keep = ring.length - part.length;
          ring.copyWithin(0, fill - keep, fill);
          ring.set(part, keep);
          fill = ring.length;
        }
      }
      heard += chunk.length;
      let sum = 0;
      for (let i = 0; i < chunk.length; i++) sum += chunk[i] * chunk[i];
      this.onLevel(10 * Math.log10(Math.max(1e-10, sum / Math.max(1, chunk.length))));
      if (heard >= nextAt && fill === ring.length && !this.busy) {
        nextAt = heard + Math.round(this.hop * sr);
        this.label(ring.slice(), sr, heard / sr);
      }
    });
  }

  async label(y, sr, end) {
    this.busy = true;
    this.count += 1;
    try {
      const answer = await this.backend.label(encodeWav(y, sr), `live-${this.count}.wav`, { display: false, topK: 1000 });
      if (this.capture) this.onResult(answer, end);
    } catch (e) {
      if (this.capture) this.onError(e);
    } finally {
      this.busy = false;
    }
  }

  stop() {
    if (this.capture) this.capture.stop();
    this.capture = null;
  }
}
