"""Small data: how good is the model from k files a class? UrbanSound8K folds 1-2, train on a
draw of k files per class from one fold, test on the whole other fold, both ways.

What a field user has, simulated on real recordings (issue 15, item 5):

* **Sizes**: k in {3, 5, 10, 20, 40} files per class (``--sizes``), several random draws
  each (``--draws``), both directions (fold 1 -> 2 and 2 -> 1).
* **Which files**: per class, the training fold's recordings are shuffled and their clips
  taken round-robin (one clip of each recording, then a second clip of each, ...), so up to
  the number of recordings the class has, every file is its own recording (a field user's
  plain-named files, ``dog_bark_1.wav``, ...); beyond that, further clips of the same
  recordings come in (as a user who cuts a long recording into files). A class with fewer
  clips than k gives all it has (fold 1: car horn 36, gun shot 35 clips; jackhammer has 5
  recordings, air conditioner 7, siren 8).
* **Names stripped of recording ids**: each drawn file becomes its own group (recording)
  for everything retrain does with it (its split, inner cross-validation), as plain names
  give it nothing else to go on; slices of one recording may then fall on both sides of an
  inner split, as they would for that user. The test fold is never drawn from, so the test
  figures stay honest.
* **Test**: every clip of the other fold (873 or 888).

Methods (rows), all on the same cached bottlenecks (``retrain.core.prepare``, so a second
run reads them from ``--bottleneck_dir`` in seconds):

* ``default``: ``retrain``'s own training path (``retrain.core.train_and_evaluate``) with its
  default settings, on the split ``retrain`` makes of the drawn files (no test slice: the
  other fold tests);
* ``probe``: scikit-learn's logistic regression on standardised features of every drawn file,
  C chosen by grouped, class-stratified inner cross-validation on them (the reference
  the issue names);
* ``default + LEVER`` / ``default - LEVER``: the default with one lever of
  :data:`benchmarks.bench_accuracy.HEAD_LEVERS` on or off.

Prints one line per run and a table (mean over draws and both directions, with its standard
error), writes ``benchmarks/results/bench_small_data.json`` and, with ``--plot``, a PNG of
accuracy against files per class (``docs/images/small_data.png``).

    .venv/bin/python -m benchmarks.bench_small_data --spec_dir /tmp/us8k_spec \\
        --bottleneck_dir /tmp/us8k_bn [--modules "aisfx,soundnet,efficientnet_lite0;efficientnet_lite0"] \\
        [--methods "default;probe"] [--sizes 3,5,10,20,40] [--draws 5] [--plot docs/images/small_data.png]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")  # see bench_accuracy: threaded BLAS thrashes a shared CPU
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_small_data.json"
SHARED_US8K = ROOT.parent / "shared" / "datasets" / "urbansound8k-folds1-2"
DIRECTIONS = ((1, 2), (2, 1))
SIZES = (3, 5, 10, 20, 40)
DEFAULT_MODULES = "aisfx,soundnet,efficientnet_lite0;efficientnet_lite0"
DEFAULT_METHODS = "default;probe"
SHAPES = ("files", "esc50", "generated")
ESC50_FOLDS = 5
GENERATED_CLASSES = 50
PROBE_C = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)
INNER_FOLDS = 5


# ------------------------------------------------------------------ the draws

def draw_files(records: Sequence, class_ids: np.ndarray, pool: Sequence[int], k: int,
               rng: np.random.Generator) -> list[int]:
    """``k`` indices of ``pool`` per class: the class's recordings in random order, their
    clips (in random order) taken round-robin, so the first files are distinct recordings."""
    chosen: list[int] = []
    for c in sorted(set(class_ids[list(pool)].tolist())):
        by_recording: dict[str, list[int]] = {}
        for i in pool:
            if class_ids[i] == c:
                by_recording.setdefault(records[i].group, []).append(i)
        recordings = [by_recording[g] for g in sorted(by_recording)]
        recordings = [list(rng.permutation(recordings[j])) for j in rng.permutation(len(recordings))]
        taken: list[int] = []
        depth = 0
        while len(taken) < k and any(depth < len(r) for r in recordings):
            taken += [int(r[depth]) for r in recordings if depth < len(r)][:k - len(taken)]
            depth += 1
        chosen += taken
    return sorted(chosen)


def plain_named(prepared):
    """``prepared`` with every image its own recording (names stripped of recording ids) and
    no folds: retrain sees the drawn files as a folder of plain-named files."""
    from retrain.images import ImageSet

    records = tuple(dataclasses.replace(r, group=f"{r.label}_{n}", fold=None)
                    for n, r in enumerate(prepared.images.records))
    images = ImageSet(prepared.images.image_dir, records, prepared.images.labels, False)
    return dataclasses.replace(prepared, images=images)


def distinct_recordings(prepared, indices: Sequence[int]) -> float:
    """Mean number of distinct source recordings per class among ``indices``."""
    records = prepared.images.records
    per_class: dict[int, set] = {}
    for i in indices:
        per_class.setdefault(int(prepared.class_ids[i]), set()).add(records[i].group)
    return float(np.mean([len(s) for s in per_class.values()]))


# ------------------------------------------------------------------ methods

@dataclasses.dataclass
class Run:
    """One method on one draw: what it scored on the test fold, and what it cost."""

    test: float
    inner_cv: Optional[float] = None  # the method's own inner-CV score, where it has one
    cpu_seconds: float = 0.0
    details: dict = dataclasses.field(default_factory=dict)


def retrain_split(settings, prepared, train: Sequence[int], test: Sequence[int],
                  test_fold: Optional[int] = None):
    """The split ``retrain`` makes of the drawn files (a validation slice only where early
    stopping or autotune reads one), with the other fold as the test set. With a
    ``test_fold`` (the ESC-50-shaped sets), the split ``--split folds --test_folds F`` makes."""
    from retrain.core import make_split
    from retrain.images import ImageSet
    from retrain.splits import Split

    train, test = list(train), list(test)
    if not (settings.head.early_stopping or settings.autotune):
        # Nothing reads a validation slice: retrain trains on it (issue 18 item 3).
        settings = dataclasses.replace(settings, validation_percentage=0)
    if test_fold is not None:
        both = train + test
        sub = ImageSet(prepared.images.image_dir, tuple(prepared.images.records[i] for i in both),
                       prepared.images.labels, True)
        part = make_split(dataclasses.replace(settings, split="folds", test_folds=(test_fold,)), sub)
        return Split(tuple(both[j] for j in part.train), tuple(both[j] for j in part.validation),
                     tuple(both[j] for j in part.test))
    sub = ImageSet(prepared.images.image_dir, tuple(prepared.images.records[i] for i in train),
                   prepared.images.labels, False)
    s = dataclasses.replace(settings, split="hash", testing_percentage=0)
    part = make_split(s, sub)
    return Split(tuple(train[j] for j in part.train), tuple(train[j] for j in part.validation),
                 tuple(test))


def retrain_method(settings) -> Callable:
    """A method that trains as ``retrain`` does with ``settings``."""
    from retrain.core import split_partition, train_and_evaluate

    def run(prepared, train, test, seed: int, test_fold: Optional[int] = None) -> Run:
        s = dataclasses.replace(settings, split="hash", testing_percentage=0) if test_fold is None \
            else dataclasses.replace(settings, split="folds", test_folds=(test_fold,))
        split = retrain_split(s, prepared, train, test, test_fold)
        cpu = time.process_time()
        outcome = train_and_evaluate(s, prepared, split, seed, "small", split_partition(s, prepared),
                                     log=lambda line: None)
        details = {"train": len(split.train), "validation": len(split.validation)}
        inner = None
        if outcome.head_report:
            inner = outcome.head_report.get("inner_cv_accuracy")
            details.update(head_c=outcome.head_report.get("c"),
                           ensemble=outcome.head_report.get("ensemble"))
        if outcome.module_report:
            details["module_chosen"] = outcome.module_report["chosen"]
            details["module_seconds"] = outcome.module_report["seconds"]
        return Run(outcome.test_accuracy, inner, time.process_time() - cpu, details)
    return run


def inner_folds(groups: Sequence[str], class_ids: np.ndarray, seed: int = 0):
    """Grouped, class-stratified inner folds: as many as the smallest class's recordings
    allow, at most :data:`INNER_FOLDS`."""
    from retrain.splits import recordings_per_class, stratified_group_kfold

    smallest = min(c for c in recordings_per_class(groups, class_ids, int(class_ids.max()) + 1) if c)
    return stratified_group_kfold(groups, class_ids, max(2, min(INNER_FOLDS, smallest)), seed)


def probe(prepared, train, test, seed: int, test_fold: Optional[int] = None) -> Run:
    """scikit-learn's logistic regression, C by grouped inner CV on the drawn files."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train, test = list(train), list(test)
    x, y = prepared.features[train], prepared.class_ids[train]
    groups = [prepared.images.records[i].group for i in train]
    cpu = time.process_time()
    search = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)),
                          {"logisticregression__C": list(PROBE_C)},
                          cv=inner_folds(groups, y, seed))
    search.fit(x, y)
    acc = float(search.score(prepared.features[test], prepared.class_ids[test]))
    return Run(acc, float(search.best_score_), time.process_time() - cpu,
               {"C": float(search.best_params_["logisticregression__C"])})


def make_methods(names: Sequence[str], base) -> dict[str, Callable]:
    from benchmarks.bench_accuracy import HEAD_LEVERS, preset_settings, with_levers

    out = {}
    for name in names:
        if name == "probe":
            out[name] = probe
        elif name == "default":
            out[name] = retrain_method(base)
        elif name.startswith("preset "):  # what retrain --preset NAME trains, on this module
            out[name] = retrain_method(dataclasses.replace(
                preset_settings(base, name.split(" ", 1)[1]), summaries_dir=None))
        else:
            parts = name.split(" ")
            if len(parts) != 3 or parts[0] != "default" or parts[1] not in "+-" \
                    or parts[2] not in HEAD_LEVERS:
                raise SystemExit(f"unknown method {name!r}: default, probe or 'default +/- LEVER' "
                                 f"({', '.join(HEAD_LEVERS)})")
            out[name] = retrain_method(with_levers(base, **{parts[2]: parts[1] == "+"}))
    return out


# ------------------------------------------------------------------ one module

def esc50_shaped(prepared, chosen: Sequence[int], folds: int, seed: int):
    """``prepared`` with the ``chosen`` clips dealt into ``folds`` folds of whole recordings,
    stratified by class (ESC-50's layout: 5 folds, recordings never split), the rest
    without a fold."""
    from retrain.images import ImageSet
    from retrain.splits import stratified_group_kfold

    records = list(prepared.images.records)
    chosen = list(chosen)
    parts = stratified_group_kfold([records[i].group for i in chosen], prepared.class_ids[chosen],
                                   folds, seed)
    fold_of = {chosen[j]: f + 1 for f, (_, held) in enumerate(parts) for j in held}
    records = tuple(dataclasses.replace(r, fold=fold_of.get(i)) for i, r in enumerate(records))
    images = ImageSet(prepared.images.image_dir, records, prepared.images.labels, True)
    return dataclasses.replace(prepared, images=images), fold_of


def generated_set(prepared, classes: int, per_class: int, seed: int):
    """ESC-50's shape in features: ``classes`` classes of ``per_class`` clips (each its own
    recording), 5 folds. A class is centred on one real recording's mean features (two
    classes may come from recordings of one UrbanSound8K class: fine distinctions, as
    ESC-50's); a clip adds a real clip's deviation from its own class's mean, so the
    scatter within a class is real. Every part of the backbone keeps its own features."""
    from retrain.images import ImageRecord, ImageSet

    x, y = prepared.features, prepared.class_ids
    records = prepared.images.records
    class_mean = np.stack([x[y == c].mean(0) for c in range(int(y.max()) + 1)])
    deviation = x - class_mean[y]
    groups = sorted({r.group for r in records})
    rng = np.random.default_rng([int(seed), 0xE5C])
    prototypes = rng.choice(len(groups), classes, replace=False)
    feats, new_records, ids = [], [], []
    for c, g in enumerate(prototypes):
        members = [i for i, r in enumerate(records) if r.group == groups[g]]
        centre = x[members].mean(0)
        picks = rng.choice(len(x), per_class, replace=False)
        for n, j in enumerate(picks):
            feats.append(centre + deviation[j])
            ids.append(c)
            new_records.append(ImageRecord(f"/generated/c{c:02d}/{n}.png", f"c{c:02d}/{n}.png",
                                           f"c{c:02d}", f"c{c:02d}-{n}",
                                           fold=1 + n % ESC50_FOLDS))
    images = ImageSet("/generated", tuple(new_records), tuple(f"c{c:02d}" for c in range(classes)), True)
    return dataclasses.replace(prepared, images=images, features=np.asarray(feats, np.float32),
                               class_ids=np.asarray(ids, np.int32))


def tasks(prepared, shape: str, k: int, draws: int):
    """``(unit, prepared, train, test, seed, test_fold)`` for every run of one size.
    ``files``: k files a class from one fold, names stripped, the other fold tests (both
    ways). ``esc50``: k clips a class from both folds, dealt into 5 folds of recordings (as
    ESC-50's 40 clips a class), each fold tested once by the other four (recording ids kept,
    as ESC-50's metadata gives them)."""
    folds = np.array([r.fold for r in prepared.images.records])
    if shape == "files":
        plain = plain_named(prepared)
        for train_fold, test_fold in DIRECTIONS:
            pool = np.flatnonzero(folds == train_fold).tolist()
            test = np.flatnonzero(folds == test_fold).tolist()
            for d in range(draws):
                rng = np.random.default_rng([k, train_fold, d])
                train = draw_files(prepared.images.records, prepared.class_ids, pool, k, rng)
                yield f"{train_fold}->{test_fold}/{d}", plain, train, test, d, None
        return
    if shape == "generated":  # 50 classes of k clips, 5 folds
        for d in range(draws):
            synthetic = generated_set(prepared, GENERATED_CLASSES, k, d)
            folds = np.array([r.fold for r in synthetic.images.records])
            for f in range(1, ESC50_FOLDS + 1):
                yield (f"generated/{d}", synthetic, np.flatnonzero(folds != f).tolist(),
                       np.flatnonzero(folds == f).tolist(), d, f)
        return
    pool = list(range(len(prepared.images.records)))
    for d in range(draws):
        rng = np.random.default_rng([k, 50, d])
        chosen = draw_files(prepared.images.records, prepared.class_ids, pool, k, rng)
        shaped, fold_of = esc50_shaped(prepared, chosen, ESC50_FOLDS, d)
        for f in range(1, ESC50_FOLDS + 1):
            train = [i for i in chosen if fold_of[i] != f]
            test = [i for i in chosen if fold_of[i] == f]
            yield f"esc50/{d}", shaped, train, test, d, f


def bench_module(module: str, spec_dir: str, bottleneck_dir: str, methods: Sequence[str],
                 sizes: Sequence[int], draws: int, log: Callable[[str], None] = print,
                 shape: str = "files") -> dict:
    from retrain.core import prepare
    from retrain.settings import RetrainSettings

    base = RetrainSettings(image_dir=spec_dir, tfhub_module=module, bottleneck_dir=bottleneck_dir,
                           summaries_dir=None, progress=False)
    prepared = prepare(base, log=log)
    table = make_methods(methods, base)
    runs = []
    for k in sizes:
        for unit, variant, train, test, seed, test_fold in tasks(prepared, shape, k, draws):
            for name, method in table.items():
                run = method(variant, train, test, seed, test_fold)
                row = {"module": module, "k": k, "unit": unit, "test_fold": test_fold,
                       "draw": seed, "method": name, "files": len(train),
                       "recordings_per_class": distinct_recordings(prepared if shape == "files" else variant, train),
                       "test": run.test, "inner_cv": run.inner_cv,
                       "cpu_seconds": run.cpu_seconds, **run.details}
                runs.append(row)
                log(json.dumps(row))
    return {"module": module, "shape": shape, "runs": runs}


def summary(runs: Sequence[dict]) -> list[dict]:
    """Mean over runs, and the standard error over independent units (a direction and draw;
    an ESC-50-shaped draw's five folds count as one), per module, method and k."""
    keys = sorted({(r["module"], r["method"], r["k"]) for r in runs},
                  key=lambda t: (t[0], t[1], t[2]))
    out = []
    for module, method, k in keys:
        rows = [r for r in runs if (r["module"], r["method"], r["k"]) == (module, method, k)]
        units: dict[str, list[float]] = {}
        for r in rows:
            units.setdefault(r["unit"], []).append(r["test"])
        test = np.array([np.mean(v) for v in units.values()])
        inner = [r["inner_cv"] for r in rows if r.get("inner_cv") is not None]
        chosen = [r["module_chosen"] for r in rows if r.get("module_chosen")]
        out.append({"module": module, "method": method, "k": k, "n": len(test),
                    "test": float(test.mean()),
                    "test_se": float(test.std(ddof=1) / np.sqrt(len(test))) if len(test) > 1 else 0.0,
                    "inner_cv": float(np.mean(inner)) if inner else None,
                    "cpu_seconds": float(np.mean([r["cpu_seconds"] for r in rows])),
                    "recordings_per_class": float(np.mean([r["recordings_per_class"] for r in rows])),
                    "modules_chosen": {m: chosen.count(m) for m in sorted(set(chosen))}})
    return out


def markdown(rows: Sequence[dict], sizes: Sequence[int]) -> str:
    methods = list(dict.fromkeys((r["module"], r["method"]) for r in rows))
    lines = ["| module | method | " + " | ".join(f"k={k}" for k in sizes) + " | CPU s/run (k=40) |",
             "|---|---|" + "---|" * len(sizes) + "---|"]
    for module, method in methods:
        cells = []
        cpu = ""
        for k in sizes:
            r = next((r for r in rows if (r["module"], r["method"], r["k"]) == (module, method, k)), None)
            cells.append("" if r is None else f"{r['test'] * 100:.1f} ± {r['test_se'] * 100:.1f}")
            if r is not None:
                cpu = f"{r['cpu_seconds']:.1f}"
        lines.append(f"| {module} | {method} | " + " | ".join(cells) + f" | {cpu} |")
    return "\n".join(lines)


LABELS = {"default": "default head (logistic, C by inner CV)",
          "default + sgd": "retrain.py's SGD head (--head sgd)",
          "probe": "logistic-regression probe (scikit-learn)"}
#: ``--tfhub_module auto`` is drawn in the presets' backbone's panel.
OVERLAY = {"auto": "aisfx,soundnet,efficientnet_lite0"}


def plot(rows: Sequence[dict], path: str) -> None:
    """Accuracy against files per class, one panel per module, one line per method (``auto``
    drawn beside the fixed combination it chooses against)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    panels = list(dict.fromkeys(OVERLAY.get(r["module"], r["module"]) for r in rows))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.4 * len(panels), 4.2), sharey=True,
                             squeeze=False)
    for ax, panel in zip(axes[0], panels):
        lines = dict.fromkeys((r["module"], r["method"]) for r in rows
                              if OVERLAY.get(r["module"], r["module"]) == panel)
        for module, method in lines:
            mine = sorted((r for r in rows if r["module"] == module and r["method"] == method),
                          key=lambda r: r["k"])
            label = LABELS.get(method, method)
            if module in OVERLAY:
                label = f"{label}, --tfhub_module {module}"
            ax.errorbar([r["k"] for r in mine], [100 * r["test"] for r in mine],
                        yerr=[100 * r["test_se"] for r in mine], marker="o", capsize=3,
                        label=label, linestyle="--" if module in OVERLAY else "-")
        ax.set_xscale("log")
        ax.set_xticks(sorted({r["k"] for r in rows}))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("files per class (distinct recordings where the class has them)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="lower right")
    axes[0][0].set_ylabel("test accuracy on the other fold (%)")
    fig.suptitle("UrbanSound8K folds 1\u21942: accuracy from k files a class (mean \u00b1 s.e. over "
                 "draws and both directions)", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec_dir", default="/tmp/us8k_spec")
    parser.add_argument("--data_dir", default=str(SHARED_US8K))
    parser.add_argument("--bottleneck_dir", default="/tmp/bottleneck")
    parser.add_argument("--modules", default=DEFAULT_MODULES,
                        help="module sets separated by ';' (each a --tfhub_module value)")
    parser.add_argument("--methods", default=DEFAULT_METHODS,
                        help="';'-separated: default, probe, 'default +/- LEVER'")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--shape", choices=SHAPES, default="files",
                        help="files: k plain-named files a class, folds 1<->2; esc50: k clips a "
                             "class of both folds in 5 folds of recordings, 5-fold CV; generated: "
                             "50 classes of k generated clips (features), 5-fold CV (use --sizes 40)")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--plot", default="", help="write the accuracy plot (PNG) here")
    parser.add_argument("--quiet", action="store_true", help="no line per run")
    parser.add_argument("--from_results", default="",
                        help="JSON files of earlier runs (comma-separated): print their table "
                             "and plot them together instead of running")
    args = parser.parse_args(argv)
    from benchmarks.bench_accuracy import render_if_missing

    sizes = [int(k) for k in args.sizes.split(",") if k.strip()]
    if args.from_results:
        runs = [r for path in args.from_results.split(",") if path.strip()
                for m in json.loads(Path(path).read_text())["modules"] for r in m["runs"]]
        rows = summary(runs)
        print(markdown(rows, sorted({r["k"] for r in rows})))
        if args.plot:
            plot(rows, args.plot)
            print(f"wrote {args.plot}")
        return 0
    if not os.path.isfile(os.path.join(args.spec_dir, "manifest.csv")) and \
            not os.path.isdir(os.path.join(args.data_dir, "audio")):
        print(f"skipped: neither rendered spectrograms in {args.spec_dir} nor the UrbanSound8K "
              f"folds in {args.data_dir}")
        return 0
    render_if_missing(args.spec_dir, args.data_dir)
    methods = [m.strip() for m in args.methods.split(";") if m.strip()]
    log = (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))
    start = time.perf_counter()
    protocol = {"files": "UrbanSound8K folds 1<->2; k files per class drawn round-robin over "
                         "the training fold's recordings, names stripped of recording ids; "
                         "test: the whole other fold",
                "esc50": "ESC-50-shaped: k clips per class drawn round-robin over the recordings "
                         "of folds 1-2, dealt into 5 class-stratified folds of whole recordings; "
                         "each fold tested by a head trained on the other four",
                "generated": "50 generated classes of k clips in features (a real recording's mean "
                             "plus real within-class deviations), 5 folds, each tested by a head "
                             "trained on the other four"}[args.shape]
    results = {"protocol": protocol, "shape": args.shape, "sizes": sizes, "draws": args.draws,
               "modules": []}
    for module in [m.strip() for m in args.modules.split(";") if m.strip()]:
        results["modules"].append(bench_module(module, args.spec_dir, args.bottleneck_dir,
                                               methods, sizes, args.draws, log, args.shape))
    rows = summary([r for m in results["modules"] for r in m["runs"]])
    results["summary"] = rows
    results["seconds"] = time.perf_counter() - start
    print(markdown(rows, sizes))
    path = Path(args.results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path} ({results['seconds']:.0f} s)")
    if args.plot:
        plot(rows, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
