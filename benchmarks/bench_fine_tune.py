"""Fine-tuning (``retrain --fine_tune_blocks``) on the shared UrbanSound8K folds 1-2: the
ablation of its recipe, every row scored by grouped cross-validation inside the training
fold (the score the recipe was chosen by) and on the other fold (reported only).

Each row is a setting of retrain's own training path (``retrain.core.train_and_evaluate``):

* ``frozen``: no fine-tuning, retrain's default head on the frozen network's features;
* ``recipe``: ``--fine_tune_blocks K`` with its defaults (:data:`RECIPE_BLOCKS` blocks, a
  fresh head, the settings of :class:`retrain.settings.FineTuneSettings`);
* ``recipe FIELD=VALUE ...``: the recipe with fields changed, where a field is one of
  ``FineTuneSettings`` (``blocks=8``, ``head=trained``, ``epochs=4``, ``augment=False``,
  ``mixup=0.2``, ``learning_rate=1e-4``, ``steps=600``, ``blocks=efficientnet_lite0:5,aisfx:1``)
  the head's ``label_smoothing`` or ``dropout``, or the map augmentation's
  (``time_masks=3``, ``mix_probability=0``: see :class:`retrain.augment.AugmentSettings`);
* ``before``: the previous release's defaults (``blocks=1 head=trained steps=600
  learning_rate=1e-4 mixup=0 mask_fraction=0.1``).

Columns: inner CV (grouped ``--cv_folds``-fold CV inside each training fold, both
directions; never reads the test fold), test accuracy 1->2, 2->1 and their mean, and CPU
seconds (process time, both cores: what a laptop pays) of one run on a whole training
fold and of the inner CV. Results go to ``benchmarks/results/bench_fine_tune.json`` as each
row finishes; a row already there (same module, row and settings) is reused, so an
interrupted ablation resumes (``--rerun`` recomputes).

    B="nice -n 10 .venv/bin/python -m benchmarks.bench_fine_tune --spec_dir /tmp/us8k_spec \\
       --bottleneck_dir /tmp/us8k_bn"
    $B --module efficientnet_lite0 --rows "frozen;before;recipe;recipe head=trained"
    $B --module aisfx,soundnet,efficientnet_lite0 --rows "frozen;recipe"
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

# Single-threaded BLAS for the probe-free runs as in bench_accuracy (set before numpy).
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_fine_tune.json"
RECIPE_BLOCKS = 5  # efficientnet_lite0's K, chosen by inner CV (docs/retrain.md)
# The previous release's defaults, in this release's fields.
BEFORE = "blocks=1 head=trained steps=600 learning_rate=1e-4 mixup=0 mask_fraction=0.1"
HEAD_FIELDS = ("label_smoothing", "dropout")
#: The map augmentation's fields (``retrain.augment.AugmentSettings``), changed per row.
AUGMENT_FIELDS = ("time_masks", "freq_masks", "mix_probability", "max_mix_weight", "time_shift")


def row_settings(settings, row: str, blocks=RECIPE_BLOCKS):
    """The settings of one row (see the module docstring) on ``settings`` (no fine-tuning)."""
    from retrain.settings import FineTuneSettings
    from soundretrain.backbones.split import parse_blocks

    words = row.split()
    if not words or words[0] not in ("frozen", "recipe", "before"):
        raise SystemExit(f"row {row!r}: start with frozen, recipe or before")
    if words[0] == "frozen":
        if len(words) > 1:
            raise SystemExit(f"row {row!r}: frozen takes no changes")
        return settings
    changes = words[1:] if words[0] == "recipe" else BEFORE.split() + words[1:]
    fine_tune = FineTuneSettings(blocks=blocks)
    head, augment = settings.head, settings.augment
    types = {f.name: f.type for f in dataclasses.fields(FineTuneSettings)}
    for change in changes:
        name, sep, text = change.partition("=")
        if not sep or (name not in types and name not in HEAD_FIELDS + AUGMENT_FIELDS):
            raise SystemExit(f"row {row!r}: {change!r} is not FIELD=VALUE with a field of "
                             f"FineTuneSettings, {', '.join(HEAD_FIELDS + AUGMENT_FIELDS)}")
        if name == "blocks":
            value = parse_blocks(text)
        elif name in HEAD_FIELDS:
            head = dataclasses.replace(head, **{name: float(text)})
            continue
        elif name in AUGMENT_FIELDS:
            default = getattr(augment, name)
            value = text == "True" if isinstance(default, bool) else type(default)(text)
            augment = dataclasses.replace(augment, **{name: value})
            continue
        elif text in ("True", "False"):
            value = text == "True"
        else:
            default = getattr(fine_tune, name)
            value = type(default)(text) if not isinstance(default, str) else text
        fine_tune = dataclasses.replace(fine_tune, **{name: value})
    return dataclasses.replace(settings, fine_tune=fine_tune, head=head, augment=augment)


def score_row(settings, prepared, seed: int, cv_folds: int) -> dict:
    """Test (both directions, one run each on the whole training fold) and inner CV."""
    from benchmarks.bench_accuracy import DIRECTIONS, evaluate, inner_cv_accuracy

    result = evaluate(settings, prepared, seed)
    if cv_folds > 1:
        for row, (train_fold, _) in zip(result["directions"], DIRECTIONS):
            cpu = time.process_time()
            row["cv"] = inner_cv_accuracy(settings, prepared, train_fold, seed, k=cv_folds)
            row["cv_cpu_seconds"] = time.process_time() - cpu
        result["mean_cv"] = float(np.mean([r["cv"] for r in result["directions"]]))
        result["cv_cpu_seconds"] = float(sum(r["cv_cpu_seconds"] for r in result["directions"]))
    return result


def settings_key(settings) -> str:
    """What a stored row depends on (its settings, minus run-only fields)."""
    return repr((settings.tfhub_module, settings.fine_tune, settings.head,
                 settings.how_many_training_steps, settings.augment))


def store_row(path: Path, stored: dict, key: str, result: dict) -> None:
    """Add one row to the results file, keeping rows other runs wrote meanwhile (two
    ablations may share the file), atomically."""
    from soundretrain import atomic_files

    current = json.loads(path.read_text()) if path.is_file() else stored
    current.setdefault("rows", {})[key] = result
    stored["rows"] = current["rows"]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_files.write_text(str(path), json.dumps(current, indent=2) + "\n")


def line(module: str, row: str, result: dict) -> str:
    rows = result["directions"]
    test = [r["test"] * 100 for r in rows]
    cv = result.get("mean_cv")
    return (f"{module[:30]:<31}{row[:44]:<45}{'-' if cv is None else f'{cv * 100:.1f}%':>8}"
            + "".join(f"{t:>8.1f}%" for t in test) + f"{np.mean(test):>8.1f}%"
            + f"{result['mean_cpu_seconds']:>9.0f}{result.get('cv_cpu_seconds', float('nan')):>9.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec_dir", default="/tmp/us8k_spec")
    parser.add_argument("--bottleneck_dir", default="/tmp/bottleneck")
    parser.add_argument("--module", default="efficientnet_lite0")
    parser.add_argument("--rows", default="frozen;before;recipe",
                        help="';'-separated rows (see the module docstring)")
    parser.add_argument("--blocks", default=str(RECIPE_BLOCKS),
                        help="the recipe's --fine_tune_blocks (K, all, or NAME:K,...)")
    parser.add_argument("--cv_folds", type=int, default=3,
                        help="grouped inner-CV folds per training fold (0: test only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=4000, help="head training steps")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--rerun", action="store_true", help="recompute rows already stored")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from retrain.core import prepare
    from soundretrain.backbones.split import parse_blocks

    from benchmarks.bench_accuracy import base_settings

    if not os.path.isfile(os.path.join(args.spec_dir, "manifest.csv")):
        print(f"skipped: no rendered spectrograms in {args.spec_dir} (see bench_accuracy.py)")
        return
    settings = base_settings(args.spec_dir, args.module, args.bottleneck_dir, args.steps)
    prepared = prepare(settings, log=lambda text: print(text, flush=True))
    path = Path(args.results)
    stored = json.loads(path.read_text()) if path.is_file() else {}
    stored.setdefault("protocol", "UrbanSound8K folds 1-2: train on one, test on the other, "
                                  "both ways; inner CV grouped by recording inside the training fold")
    rows = stored.setdefault("rows", {})
    print(f"{'module':<31}{'row':<45}{'inner CV':>8}{'1->2':>9}{'2->1':>9}{'mean':>9}"
          f"{'CPU s':>9}{'CV CPU s':>9}", flush=True)
    for row in [r.strip() for r in args.rows.split(";") if r.strip()]:
        s = row_settings(settings, row, parse_blocks(args.blocks))
        key = f"{args.module} | {row}" + ("" if args.blocks == str(RECIPE_BLOCKS) or row == "frozen"
                                         else f" | blocks={args.blocks}")
        old = rows.get(key)
        if old and not args.rerun and old.get("settings") == settings_key(s) \
                and old.get("cv_folds") == args.cv_folds:
            result = old
        else:
            result = dict(score_row(s, prepared, args.seed, args.cv_folds),
                          settings=settings_key(s), cv_folds=args.cv_folds)
            store_row(path, stored, key, result)
        print(line(args.module, row, result), flush=True)
    print(f"results in {path}")


if __name__ == "__main__":
    main()
