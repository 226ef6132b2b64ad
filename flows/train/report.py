"""The model folder's report: how the model was evaluated and why, per-class accuracy and the
confusion matrix, as ``report.json`` (for programs: the studio shows it), ``report.md`` (for
people) and ``confusion.png``."""
from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

from soundretrain import atomic_files
from soundretrain.open_set import UNKNOWN, OpenSet, is_background

REPORT_FORMAT = 1
REPORT_JSON, REPORT_MD, CONFUSION_PNG = "report.json", "report.md", "confusion.png"


def _round(x: Optional[float], digits: int = 4) -> Optional[float]:
    return None if x is None or not np.isfinite(x) else round(float(x), digits)


def build_report(result, settings, folders, spec_dir: str, seconds: float) -> dict:
    """The report of a :class:`retrain.core.RetrainResult` as a JSON-ready dict."""
    from retrain.summaries import confusion_matrix

    images = result.images
    labels = list(result.labels)
    class_ids = np.asarray(images.class_ids(), int)
    groups = [r.group for r in images.records]
    idx = np.asarray(result.evaluated_indices if result.evaluated_indices is not None else [], int)
    probs = result.evaluated_probabilities
    evaluated = len(idx) > 0 and probs is not None and len(probs) == len(idx)
    cm = (confusion_matrix(class_ids[idx], np.argmax(probs, 1), len(labels)) if evaluated
          else np.zeros((len(labels), len(labels)), int))
    classes = []
    for k, label in enumerate(labels):
        mine = np.flatnonzero(class_ids == k)
        support, predicted = int(cm[k].sum()), int(cm[:, k].sum())
        classes.append({
            "label": label,
            "recordings": len({groups[i] for i in mine}),
            "clips": int(len(mine)),
            "evaluated_clips": support,
            "correct": int(cm[k, k]),
            "accuracy": _round(cm[k, k] / support) if support else None,  # recall
            "precision": _round(cm[k, k] / predicted) if predicted else None,
        })
    open_set = result.open_set
    unknown = None
    if evaluated and open_set:
        decide = OpenSet.from_sidecar({"open_set": open_set}, labels)
        picks = [decide.decide(p)[0] for p in probs]
        known = np.asarray([not is_background(labels[class_ids[i]]) for i in idx])
        called_unknown = np.asarray([p is None for p in picks])
        right = np.asarray([p is not None and p == class_ids[i] for p, i in zip(picks, idx)])
        unknown = {"threshold": open_set["threshold"],
                   "share_of_evaluated_known_clips_called_unknown": _round(called_unknown[known].mean()),
                   "accuracy_with_unknown": _round(right[known].mean())}
    evaluation = dict(result.evaluation or {})
    return {
        "format": REPORT_FORMAT,
        "accuracy": evaluation.get("accuracy"),
        "evaluation": evaluation,
        "labels": labels,
        "classes": classes,
        "confusion_matrix": {"labels": labels, "rows": "true class", "columns": "predicted class",
                             "counts": cm.astype(int).tolist()},
        "open_set": dict(open_set or {}, **({"measured": unknown} if unknown else {})) or None,
        "unknown_label": UNKNOWN,
        "recordings": len(set(groups)),
        "clips": len(images.records),
        "module": settings.tfhub_module,
        "seed": result.seed,
        "seconds": round(seconds, 1),
        "audio_dir": os.path.abspath(settings.audio_dir),
        "background_dir": os.path.abspath(settings.background_dir) if settings.background_dir else None,
        "spectrograms": spec_dir,
        "warnings": list(folders.notes),
        "files": {key: os.path.basename(path) for key, path in sorted(result.written.items())},
    }


def markdown(report: dict, model_file: str) -> str:
    ev = report["evaluation"]
    acc = report["accuracy"]
    lines = [f"# Model report: {len(report['labels'])} classes, {report['recordings']} recordings",
             ""]
    if acc is not None:
        how = {"kfold": f"grouped {ev.get('k')}-fold cross-validation", "holdout": "held-out test"}
        lines.append(f"**Accuracy: {acc * 100:.1f} %** ({how.get(ev.get('method'), ev.get('method'))}, "
                     f"{ev.get('count')} clips).")
    else:
        lines.append("**Not evaluated** (every recording trained the model).")
    lines += ["", f"How: {ev.get('reason', '')}.", ""]
    lines += ["| class | recordings | clips | accuracy | precision |", "|---|---:|---:|---:|---:|"]
    for c in report["classes"]:
        a = "–" if c["accuracy"] is None else f"{c['accuracy'] * 100:.0f} % ({c['correct']}/{c['evaluated_clips']})"
        p = "–" if c["precision"] is None else f"{c['precision'] * 100:.0f} %"
        lines.append(f"| {c['label']} | {c['recordings']} | {c['clips']} | {a} | {p} |")
    lines += ["", "![confusion matrix](confusion.png)", ""]
    open_set = report.get("open_set")
    if open_set and not open_set.get("threshold"):
        lines.append(f"No \"unknown\" threshold: {open_set.get('count')} held-out predictions are too few to "
                     "calibrate one; every sound is named after its nearest class"
                     + (" (the background class excepted)." if open_set.get("background_labels") else "."))
        lines.append("")
    elif open_set:
        measured = open_set.get("measured") or {}
        lines.append(f"Unknown sounds: below a best-class probability of {open_set['threshold']:.3f} "
                     f"a sound is labelled `{report['unknown_label']}` (calibrated on "
                     f"{open_set.get('calibrated_on')})."
                     + (f" On the evaluated clips that costs "
                        f"{measured['share_of_evaluated_known_clips_called_unknown'] * 100:.1f} % of them "
                        f"(accuracy counting those as wrong: {measured['accuracy_with_unknown'] * 100:.1f} %)."
                        if measured else ""))
        lines.append("")
    for w in report.get("warnings") or []:
        lines.append(f"- Warning: {w}")
    lines += ["", "Label new recordings:", "", "```sh",
              f"label_image --graph {model_file} --audio new_recording.wav",
              f"label_image --graph {model_file} --audio_dir more_recordings/", "```", ""]
    return "\n".join(lines)


def write_report(folder: str, result, settings, folders, spec_dir: str, seconds: float) -> str:
    """``report.json``, ``report.md`` and ``confusion.png`` in ``folder``; the JSON's path."""
    from retrain.summaries import confusion_matrix_png

    report = build_report(result, settings, folders, spec_dir, seconds)
    counts = np.asarray(report["confusion_matrix"]["counts"], int)
    acc = report["accuracy"]
    title = ("not evaluated" if acc is None else
             f"{report['evaluation'].get('method')} accuracy {acc * 100:.1f}%")
    atomic_files.write_bytes(os.path.join(folder, CONFUSION_PNG),
                             confusion_matrix_png(counts, report["labels"], title))
    files = report["files"]
    model = files.get("output_audio_tflite") or files.get("output_tflite") or "model.tflite"
    out_dir = os.path.abspath(settings.output_dir)
    atomic_files.write_text(os.path.join(folder, REPORT_MD), markdown(report, os.path.join(out_dir, model)))
    path = os.path.join(folder, REPORT_JSON)
    atomic_files.write_text(path, json.dumps(report, indent=2, allow_nan=False) + "\n")
    return path
