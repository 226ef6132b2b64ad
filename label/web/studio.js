// The studio's tabs (label_image --serve --project_dir): collect clips into classes (record,
// upload, drop, cut from a long recording), train in the background with live progress and a
// report, and export. Everything goes through the project API (project-api.js).
import * as api from "./project-api.js";
import { WarmMicrophone, decodeBlob, play, recordFor, spanWav, stopPlaying } from "./audio.js";
import { GUTTER, RIGHT, confusionTable, drawCurve, fitCanvas, percent, scoreCell, seconds, tickStep } from "./view.js";
import { encodeWav } from "./wav.js";

const $ = (id) => document.getElementById(id);
const POLL_MS = 1000;
const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
};
const stamp = () => new Date().toISOString().slice(0, 23).replace(/[-:T.]/g, "");

export function startStudio(ctx) {
  const studio = { training: null, polling: null, recording: null, imported: null, drag: null };
  // Clip after clip from one open microphone; it closes 2 min after the last, or when the
  // page leaves the Collect tab or is hidden.
  const mic = new WarmMicrophone(120000, (open) => { document.body.dataset.mic = open ? "open" : "closed"; });
  const closeMic = () => {
    if (studio.recording) studio.recording.stop();
    mic.close();
  };
  document.addEventListener("visibilitychange", () => { if (document.hidden) closeMic(); });

  // --- collect --------------------------------------------------------------------------

  async function refresh() {
    const data = await api.dataset();
    ctx.setDataset(data);
    showDataset(data);
    return data;
  }

  async function act(promise, done) {
    try {
      const result = await promise;
      if (done) ctx.status(typeof done === "function" ? done(result) : done);
      await refresh();
      return result;
    } catch (e) {
      ctx.status(e.message, true);
      return null;
    }
  }

  function showDataset(data) {
    const m = ctx.model();
    $("clip-length").textContent = `${seconds(ctx.recordSeconds())} a clip`
      + (Math.abs(ctx.recordSeconds() - m.window_seconds) < 1e-6 ? ": the model's window" : "");
    const holder = $("classes");
    const names = data.classes.map((c) => c.name);
    holder.replaceChildren(...data.classes.map((c) => classCard(c, names)));
    if (!data.classes.length) holder.append(el("p", { className: "muted", textContent: "No classes yet: add one above." }));
    const select = $("import-class");
    const chosen = select.value;
    select.replaceChildren(...names.map((n) => el("option", { value: n, textContent: n })));
    if (names.includes(chosen)) select.value = chosen;
    showImportButtons();
    showTrainSummary(data);
  }

  function classCard(c, names) {
    const card = el("div", { className: "class-card" });
    card.dataset.class = c.name;
    const title = el("h3", { className: "class-name", textContent: c.name });
    const label = c.label !== c.name ? el("span", { className: "muted tag", textContent: `label “${c.label}”` }) : "";
    const count = el("span", { className: "muted count",
                               textContent: `${c.count} clip${c.count === 1 ? "" : "s"} · ${seconds(c.seconds)}` });
    const record = el("button", { type: "button", className: "small record-clip", textContent: "● Record" });
    record.addEventListener("click", () => recordInto(c.name, record));
    const upload = el("input", { type: "file", multiple: true, className: "upload-clip",
                                 accept: "audio/*,.wav,.flac,.ogg,.mp3,.aiff,.aif,.au,.m4a" });
    upload.addEventListener("change", () => { uploadInto(c.name, upload.files); upload.value = ""; });
    const uploadLabel = el("label", { className: "file-button small", textContent: "Upload…" }, upload);
    const rename = el("button", { type: "button", className: "small rename-class", textContent: "Rename" });
    rename.addEventListener("click", () => startRename(card, c.name));
    const remove = el("button", { type: "button", className: "small delete-class", textContent: "Delete" });
    remove.addEventListener("click", () => {
      if (window.confirm(`Delete class ${c.name} and its ${c.count} clip(s)?`)) {
        act(api.deleteClass(c.name), `deleted class ${c.name}`);
      }
    });
    const head = el("div", { className: "class-head" }, title, label, count,
                    el("span", { className: "buttons" }, record, uploadLabel, rename, remove));
    const clips = el("ol", { className: "clips" }, ...c.clips.map((clip) => clipRow(c.name, clip, names)));
    card.append(head, clips);
    if (c.background) card.append(el("p", { className: "muted", textContent: "noise and silence: trained on, never reported" }));
    card.addEventListener("dragover", (e) => { e.preventDefault(); e.stopPropagation(); card.classList.add("over"); });
    card.addEventListener("dragleave", () => card.classList.remove("over"));
    card.addEventListener("drop", (e) => {
      e.preventDefault();
      e.stopPropagation();
      card.classList.remove("over");
      document.getElementById("dropzone").classList.remove("over");
      if (e.dataTransfer && e.dataTransfer.files.length) uploadInto(c.name, e.dataTransfer.files);
    });
    return card;
  }

  function clipRow(className, clip, names) {
    const row = el("li", { className: "clip" });
    row.dataset.clip = clip.id;
    const playButton = el("button", { type: "button", className: "small play-clip", textContent: "▶", title: "play" });
    playButton.addEventListener("click", () => playClip(className, clip.id));
    const move = el("select", { className: "move-clip", title: "move to another class" },
                    el("option", { value: "", textContent: "move to…" }),
                    ...names.filter((n) => n !== className).map((n) => el("option", { value: n, textContent: n })));
    move.addEventListener("change", () => {
      if (move.value) act(api.moveClip(className, clip.id, move.value), (m) => `moved ${clip.id} to ${m.class}`);
    });
    const remove = el("button", { type: "button", className: "small delete-clip", textContent: "✕", title: "delete" });
    remove.addEventListener("click", () => act(api.deleteClip(className, clip.id), `deleted ${clip.id}`));
    row.append(playButton, el("span", { className: "clip-name", textContent: clip.id, title: clip.id }),
               el("span", { className: "muted", textContent: clip.seconds === null ? "" : seconds(clip.seconds) }),
               move, remove);
    return row;
  }

  async function playClip(className, clip) {
    try {
      const response = await fetch(api.clipUrl(className, clip));
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const { y, sr } = await decodeBlob(await response.blob());
      document.body.dataset.playing = clip;
      await play(y, sr);
    } catch (e) {
      ctx.status(`cannot play ${clip}: ${e.message}`, true);
    } finally {
      delete document.body.dataset.playing;
      document.body.dataset.played = String(+(document.body.dataset.played || 0) + 1);
    }
  }

  function startRename(card, name) {
    const title = card.querySelector(".class-name");
    const input = el("input", { type: "text", value: name, maxLength: 64, className: "rename-input" });
    const save = el("button", { type: "button", className: "small", textContent: "Save" });
    const done = (ok) => {
      if (ok && input.value.trim() && input.value.trim() !== name) act(api.renameClass(name, input.value.trim()), (r) => `renamed ${name} to ${r.name}`);
      else refresh();
    };
    input.addEventListener("keydown", (e) => { if (e.key === "Enter") done(true); if (e.key === "Escape") done(false); });
    save.addEventListener("click", () => done(true));
    title.replaceWith(el("span", { className: "rename" }, input, save));
    input.focus();
    input.select();
  }

  async function recordInto(name, button) {
    if (studio.recording) { studio.recording.stop(); return; }
    stopPlaying();
    const want = ctx.recordSeconds();
    const recording = recordFor(want, (t) => { button.textContent = `■ ${seconds(Math.max(0, want - t))}`; }, mic);
    studio.recording = recording;
    button.classList.add("recording");
    ctx.status(`recording ${seconds(want)} for ${name}…`);
    try {
      const { y, sr } = await recording.done;
      if (!y.length) throw new Error("nothing was recorded");
      await act(api.addClip(name, encodeWav(y, sr), `rec-${stamp()}.wav`), (c) => `recorded ${c.id} into ${c.class} · the microphone stays on 2 min for the next clip`);
    } catch (e) {
      ctx.status(e.message, true);
    } finally {
      studio.recording = null;
      button.classList.remove("recording");
      button.textContent = "● Record";
    }
  }

  async function uploadInto(name, files) {
    let added = 0;
    const failed = [];
    for (const file of files) {
      ctx.status(`adding ${file.name} to ${name}…`);
      try {
        await api.addClip(name, file, file.name);
        added += 1;
      } catch (e) {
        failed.push(e.message);
      }
    }
    await refresh().catch(() => {});
    if (failed.length) ctx.status(`added ${added} of ${files.length} file(s) to ${name}; ${failed[0]}`, true);
    else ctx.status(`added ${added} file(s) to ${name}`);
  }

  $("new-class-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const name = $("new-class").value.trim();
    if (!name) return;
    act(api.addClass(name), (r) => (r.created ? `added class ${r.name}` : `class ${r.name} exists`))
      .then((r) => { if (r) $("new-class").value = ""; });
  });

  // --- cut clips from a long recording ---------------------------------------------------

  const imp = () => studio.imported;

  function importX(t, width) {
    return GUTTER + (t / imp().duration) * (width - GUTTER - RIGHT);
  }

  function importT(px, width) {
    return Math.max(0, Math.min(imp().duration, ((px - GUTTER) / (width - GUTTER - RIGHT)) * imp().duration));
  }

  function drawImport(playhead = null) {
    const s = imp();
    if (!s) return;
    const canvas = $("import-wave");
    const { g, width, height } = fitCanvas(canvas, 120);
    const bottom = height - 20, mid = bottom / 2;
    const plot = width - GUTTER - RIGHT;
    const points = Math.max(1, Math.floor(plot));
    const per = s.y.length / points;
    g.strokeStyle = "#1d2433";
    g.beginPath();
    for (let i = 0; i < points; i++) {
      let lo = 0, hi = 0;
      for (let j = Math.floor(i * per); j < Math.min(s.y.length, Math.floor((i + 1) * per)); j++) {
        lo = Math.min(lo, s.y[j]);
        hi = Math.max(hi, s.y[j]);
      }
      g.moveTo(GUTTER + i + 0.5, mid - hi * (mid - 2));
      g.lineTo(GUTTER + i + 0.5, mid - lo * (mid - 2) + 0.5);
    }
    g.stroke();
    const regions = s.drag ? [...s.regions, s.drag] : s.regions;
    regions.forEach((r, k) => {
      g.fillStyle = r === s.drag ? "rgba(217, 45, 32, 0.18)" : "rgba(36, 99, 235, 0.22)";
      g.fillRect(importX(r.start, width), 0, importX(r.end, width) - importX(r.start, width), bottom);
      if (r !== s.drag) {
        g.fillStyle = "#2463eb";
        g.font = "11px system-ui, sans-serif";
        g.fillText(String(k + 1), importX(r.start, width) + 3, 12);
      }
    });
    g.fillStyle = "#667085";
    g.font = "11px system-ui, sans-serif";
    g.textAlign = "center";
    const step = tickStep(s.duration, Math.max(2, Math.floor(plot / 70)));
    for (let t = 0; t <= s.duration + 1e-9; t += step) {
      g.fillRect(importX(t, width), bottom, 1, 4);
      g.fillText(`${+t.toFixed(2)} s`, Math.min(Math.max(importX(t, width), GUTTER + 12), width - 16), bottom + 15);
    }
    g.textAlign = "left";
    if (playhead !== null) {
      g.fillStyle = "#d92d20";
      g.fillRect(importX(playhead, width) - 1, 0, 2, bottom);
    }
  }

  function showRegions() {
    const s = imp();
    $("import-regions").replaceChildren(...(s ? s.regions : []).map((r, k) => {
      const playButton = el("button", { type: "button", className: "small", textContent: "▶" });
      playButton.addEventListener("click", () => playRegion(r));
      const remove = el("button", { type: "button", className: "small", textContent: "✕" });
      remove.addEventListener("click", () => { s.regions.splice(k, 1); showRegions(); drawImport(); });
      return el("li", {}, playButton, el("span", { textContent: ` ${r.start.toFixed(2)}–${r.end.toFixed(2)} s ` }), remove);
    }));
    showImportButtons();
  }

  function showImportButtons() {
    const n = imp() ? imp().regions.length : 0;
    const target = $("import-class").value;
    $("import-cut").textContent = `Add ${n} clip${n === 1 ? "" : "s"}${target ? ` to ${target}` : ""}`;
    $("import-cut").disabled = !n || !target;
  }

  async function playRegion(r) {
    const s = imp();
    await play(s.y, s.sr, r.start, r.end, (t) => drawImport(t));
  }

  $("import-file").addEventListener("change", async (e) => {
    const file = e.target.files[0];
    e.target.value = "";
    if (file) await openRecording(file);
  });

  async function openRecording(file) {
    ctx.status(`opening ${file.name}…`);
    try {
      const { y, sr } = await decodeBlob(file);
      studio.imported = { y, sr, duration: y.length / sr, name: file.name, regions: [], drag: null };
      $("import-name").textContent = `${file.name} · ${seconds(y.length / sr)}`;
      $("import-box").hidden = false;
      requestAnimationFrame(() => { drawImport(); showRegions(); });
      ctx.status(`${file.name}: drag across the waveform to mark the sounds to keep`);
    } catch (err) {
      ctx.status(`cannot open ${file.name} in this browser (${err.message || err.name}); convert it to WAV or FLAC`, true);
    }
  }

  const wave = $("import-wave");
  wave.addEventListener("pointerdown", (e) => {
    const s = imp();
    if (!s) return;
    const width = wave.clientWidth;
    const t = importT(e.offsetX, width);
    s.drag = { start: t, end: t, from: t, x: e.offsetX };
    wave.setPointerCapture(e.pointerId);
  });
  wave.addEventListener("pointermove", (e) => {
    const s = imp();
    if (!s || !s.drag) return;
    const t = importT(e.offsetX, wave.clientWidth);
    s.drag.start = Math.min(s.drag.from, t);
    s.drag.end = Math.max(s.drag.from, t);
    drawImport();
  });
  wave.addEventListener("pointerup", (e) => {
    const s = imp();
    if (!s || !s.drag) return;
    const d = s.drag;
    s.drag = null;
    if (Math.abs(e.offsetX - d.x) < 4) {  // a click: play the mark under it
      const t = importT(e.offsetX, wave.clientWidth);
      const hit = s.regions.find((r) => r.start <= t && t <= r.end);
      if (hit) playRegion(hit);
      drawImport();
      return;
    }
    if (d.end - d.start >= 0.05) s.regions.push({ start: d.start, end: d.end });
    s.regions.sort((a, b) => a.start - b.start);
    showRegions();
    drawImport();
  });
  wave.addEventListener("dblclick", (e) => {
    const s = imp();
    if (!s) return;
    const t = importT(e.offsetX, wave.clientWidth);
    const k = s.regions.findIndex((r) => r.start <= t && t <= r.end);
    if (k >= 0) { s.regions.splice(k, 1); showRegions(); drawImport(); }
  });
  $("import-windows").addEventListener("click", () => {
    const s = imp();
    if (!s) return;
    const w = ctx.recordSeconds();
    s.regions = [];
    for (let t = 0; t + Math.min(w, s.duration) <= s.duration + 1e-9; t += w) s.regions.push({ start: t, end: Math.min(t + w, s.duration) });
    showRegions();
    drawImport();
  });
  $("import-clear").addEventListener("click", () => { if (imp()) { imp().regions = []; showRegions(); drawImport(); } });
  $("import-class").addEventListener("change", showImportButtons);
  $("import-box").addEventListener("drop", (e) => {
    e.preventDefault();
    e.stopPropagation();
    if (e.dataTransfer && e.dataTransfer.files.length) openRecording(e.dataTransfer.files[0]);
  });
  $("import-cut").addEventListener("click", async () => {
    const s = imp();
    const target = $("import-class").value;
    if (!s || !target || !s.regions.length) return;
    // marks of one recording share its name: train keeps them on one side of a split
    const stem = s.name.replace(/\.[^.]+$/, "").replace(/[^\w.-]+/g, "_") || "recording";
    let added = 0;
    const copies = [];  // marks the project holds already: skipped, the others still go in
    try {
      for (const [k, r] of s.regions.entries()) {
        ctx.status(`adding mark ${k + 1} of ${s.regions.length} to ${target}…`);
        try {
          await api.addClip(target, spanWav(s.y, s.sr, r.start, r.end), `${stem}_nohash_${k + 1}.wav`);
          added += 1;
        } catch (e) {
          if (!e.duplicateOf) throw e;
          copies.push(`mark ${k + 1} (${e.duplicateOf.class}/${e.duplicateOf.id})`);
        }
      }
      ctx.status(`added ${added} clip(s) from ${s.name} to ${target}`
        + (copies.length ? `; skipped ${copies.length} already in the project: ${copies.join(", ")}` : ""));
      s.regions = [];
      showRegions();
      drawImport();
    } catch (e) {
      ctx.status(`added ${added} of ${s.regions.length}; ${e.message}`, true);
    }
    await refresh().catch(() => {});
  });

  // --- train ---------------------------------------------------------------------------

  function showTrainSummary(data) {
    const usable = data.classes.filter((c) => c.count > 0 && !c.background);
    const short = data.classes.filter((c) => c.count > 0 && c.count < data.min_clips);
    const parts = data.classes.map((c) => `${c.name} ${c.count}`);
    let problem = "";
    if (usable.length < 2) problem = "Add clips of at least 2 classes.";
    else if (short.length) problem = `${short[0].name} needs at least ${data.min_clips} clips.`;
    const few = usable.filter((c) => c.count < 5).map((c) => c.name);
    $("train-summary").textContent = `${data.total_clips} clips in ${data.classes.length} classes`
      + (parts.length ? ` (${parts.join(", ")})` : "") + ". "
      + (problem || (few.length ? `5 or more clips a class train a better model (${few.join(", ")}).` : ""));
    $("train-start").disabled = !!problem || !!(studio.training && studio.training.state === "running");
    $("train-start").title = problem;
  }

  function showTraining(t) {
    const before = studio.training ? studio.training.state : null;
    studio.training = t;
    const running = t.state === "running";
    $("train-cancel").hidden = !running;
    $("train-start").disabled = running || $("train-start").title !== "";
    $("train-start").textContent = ctx.model().model === null ? "Train" : "Train again";
    const box = $("train-state");
    const text = {
      idle: "Not trained yet.",
      running: `Training${t.resumed ? " (resumed after a restart)" : ""}: ${t.stage || "starting"} · ${t.message || ""}`,
      done: `Done: ${t.message || "the new model is in use"}`,
      failed: `Failed: ${t.message}`,
      cancelled: "Cancelled; the previous model (if any) is in use.",
    }[t.state] || t.state;
    box.textContent = text;
    box.classList.toggle("error", t.state === "failed");
    document.body.dataset.training = t.state;
    $("train-progress-box").hidden = t.state === "idle";
    $("train-progress").style.width = `${Math.round(100 * (t.progress || 0))}%`;
    const steps = t.total_steps ? `step ${t.step} of ${t.total_steps}` : "";
    const acc = typeof t.accuracy === "number" ? `accuracy ${percent(t.accuracy)}` : "";
    $("train-step").textContent = [`${Math.round(100 * (t.progress || 0))} %`, steps, acc,
      t.elapsed_s !== undefined ? `${Math.round(t.elapsed_s)} s` : ""].filter(Boolean).join(" · ");
    const curve = t.curve || [];
    $("train-curve-box").hidden = !curve.length;
    if (curve.length) drawCurve($("train-curve"), curve, t.stage === "training" ? t.total_steps : 0);
    if (running && !studio.polling) studio.polling = setTimeout(poll, POLL_MS);
    if (before === "running" && t.state !== "running") finished(t);
  }

  async function finished(t) {
    if (t.state === "done") {
      await ctx.refreshModel();
      await showReport();
      ctx.status(`training done: the new model is in use${typeof t.accuracy === "number" ? ` (${percent(t.accuracy)})` : ""}`);
    } else if (t.state === "failed") {
      ctx.status(`training failed: ${t.message}`, true);
    }
  }

  async function poll() {
    studio.polling = null;
    try {
      showTraining(await api.trainStatus());
    } catch (e) {
      $("train-state").textContent = e.message;
      studio.polling = setTimeout(poll, POLL_MS * 3);
    }
  }

  $("train-start").addEventListener("click", async () => {
    try {
      $("report").hidden = true;
      showTraining(await api.train());
    } catch (e) {
      $("train-state").textContent = e.message;
      $("train-state").classList.add("error");
    }
  });
  $("train-cancel").addEventListener("click", async () => {
    try { showTraining(await api.cancelTraining()); } catch (e) { ctx.status(e.message, true); }
  });

  async function showReport() {
    let r;
    try { r = await api.report(); } catch { $("report").hidden = true; return; }
    $("report").hidden = false;
    const ev = r.evaluation || {};
    const how = { kfold: `grouped ${ev.k || ""}-fold cross-validation`, holdout: "a held-out test set" }[ev.method] || ev.method || "";
    $("report-accuracy").textContent = typeof r.accuracy === "number" ? `accuracy ${percent(r.accuracy)}` : "not evaluated";
    // the train command's reason says how and why in a sentence; else say how
    const why = ev.reason ? ev.reason[0].toUpperCase() + ev.reason.slice(1) : "";
    $("report-how").textContent = why ? `${why}${ev.count ? ` (${ev.count} evaluated clips)` : ""}.`
      : how ? `Measured by ${how}${ev.count ? ` on ${ev.count} clips` : ""}.` : "";
    const rows = $("report-classes").querySelector("tbody");
    rows.replaceChildren(...(r.classes || []).map((c) => {
      const tr = el("tr", {}, el("td", { textContent: c.label }),
                    el("td", { textContent: `${c.clips} (${c.recordings} rec.)` }));
      if (typeof c.accuracy === "number") {
        const cell = scoreCell(c.accuracy);
        cell.title = `${c.correct} of ${c.evaluated_clips} right`;
        tr.append(cell);
      } else {
        tr.append(el("td", { className: "muted", textContent: "not evaluated" }));
      }
      return tr;
    }));
    const cm = r.confusion_matrix;
    if (cm && cm.counts) confusionTable($("confusion"), cm.labels, cm.counts);
  }

  // --- export --------------------------------------------------------------------------

  async function showExports() {
    let d;
    try { d = await api.exports(); } catch (e) { ctx.status(e.message, true); return; }
    const items = [];
    const link = (url, text, note = "") => el("li", {}, el("a", { href: url, textContent: text, download: "" }),
                                              el("span", { className: "muted", textContent: note }));
    for (const f of d.model) {
      const what = f.name === d.serving ? " · the model in use (audio in, TFLite)"
        : f.kind === "tfjs" || /tfjs/i.test(f.name) ? " · TF.js graph model, for the browser (tf.loadGraphModel)" : "";
      items.push(link(f.url, f.name, `${f.bytes ? ` ${(f.bytes / 1024).toFixed(0)} kB` : ""}${what}`));
    }
    if (d.model_zip) items.push(link(d.model_zip, "model folder (.zip)", " · every file above"));
    if (d.web_zip) {
      items.push(link(d.web_zip, "in-browser page (.zip)",
                      " · a static site running the TF.js model: unzip, serve with any static server; nothing leaves the device"));
    }
    items.push(link(d.project_zip, "project (.zip)", " · the clips in class folders, and the model"));
    if (!d.model.length) items.unshift(el("li", { className: "muted", textContent: "No model yet: train one first." }));
    $("downloads").replaceChildren(...items);
  }

  // --- start ---------------------------------------------------------------------------

  poll();
  if (ctx.model().model !== null) showReport();
  return {
    showDataset,
    shown(tab) {
      if (tab !== "collect") closeMic();
      if (tab === "export") showExports();
      if (tab === "train") { poll(); }
      if (tab === "collect") requestAnimationFrame(() => drawImport());
    },
  };
}
