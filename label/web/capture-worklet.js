// Runs on the audio thread: hands the microphone's samples (mono, averaged over the
// channels as label/mic.py's FileSource does) to the page in chunks of 2048.
class Capture extends AudioWorkletProcessor {
  constructor() { super(); this.buf = new Float32Array(2048); this.fill = 0; }
  process(inputs) {
    const channels = inputs[0];
    if (channels && channels.length) {
      const n = channels[0].length;
      for (let i = 0; i < n; i++) {
        let v = 0;
        for (const c of channels) v += c[i];
        this.buf[this.fill++] = v / channels.length;
        if (this.fill === this.buf.length) {
          this.port.postMessage(this.buf);
          this.buf = new Float32Array(2048);
          this.fill = 0;
        }
      }
    }
    return true;
  }
}
registerProcessor("capture", Capture);
