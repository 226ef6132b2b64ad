// Float32 mono samples -> a 16-bit PCM WAV file (what the page uploads).
export function encodeWav(samples, sampleRate) {
  const bytes = 44 + samples.length * 2;
  const view = new DataView(new ArrayBuffer(bytes));
  const text = (at, s) => { for (let i = 0; i < s.length; i++) view.setUint8(at + i, s.charCodeAt(i)); };
  text(0, "RIFF"); view.setUint32(4, bytes - 8, true); text(8, "WAVE");
  text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, sampleRate, true); view.setUint32(28, sampleRate * 2, true);
  view.setUint16(32, 2, true); view.setUint16(34, 16, true);
  text(36, "data"); view.setUint32(40, samples.length * 2, true);
  for (let i = 0, at = 44; i < samples.length; i++, at += 2) {
    const v = Math.max(-1, Math.min(1, samples[i]));
    view.setInt16(at, v < 0 ? Math.round(v * 32768) : Math.round(v * 32767), true);
  }
  return new Blob([view], { type: "audio/wav" });
}
