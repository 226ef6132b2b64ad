"""``--preview N``: one PNG grid of N spectrograms per class, for looking at."""
from __future__ import annotations

import os
from typing import Sequence

from soundretrain import atomic_files
from soundretrain.manifest import ManifestRow

PREVIEW_FILENAME = "preview.png"


def pick_preview_rows(rows: Sequence[ManifestRow], per_class: int) -> dict[str, list[ManifestRow]]:
    """``per_class`` images of each label: non-silent first, one per source recording
    (group) before a second from the same one, in image order."""
    by_label: dict[str, list[ManifestRow]] = {}
    for r in sorted(rows, key=lambda r: r.image):
        by_label.setdefault(r.label, []).append(r)
    chosen = {}
    for label, candidates in sorted(by_label.items()):
        seen_groups: set[str] = set()
        first, later, silent = [], [], []
        for r in candidates:
            if r.silent:
                silent.append(r)
                continue
            (later if r.group in seen_groups else first).append(r)
            seen_groups.add(r.group)
        chosen[label] = sorted((first + later + silent)[:per_class], key=lambda r: r.image)
    return chosen


def write_preview(output_dir: str, rows: Sequence[ManifestRow], per_class: int) -> str:
    """Draw the grid (one row per class, titled) into ``<output_dir>/preview.png``; return its path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from PIL import Image

    chosen = pick_preview_rows(rows, per_class)
    if not chosen:
        raise ValueError("no images to preview")
    n_rows, n_cols = len(chosen), max(len(v) for v in chosen.values())
    # At least 3.6 in wide, and the title on two lines when narrow: with 1-3 columns the
    # one-line title was cut off at both edges.
    narrow = n_cols < 4
    fig, axes = plt.subplots(n_rows, n_cols, squeeze=False,
                             figsize=(max(3.6, 1.8 * n_cols + 0.6), 1.9 * n_rows + (0.2 if narrow else 0.0)))
    for i, (label, picked) in enumerate(chosen.items()):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(picked):
                ax.axis("off")
                continue
            r = picked[j]
            with Image.open(os.path.join(output_dir, r.image)) as img:
                ax.imshow(img.convert("RGB"))
            name = os.path.splitext(os.path.basename(r.image))[0]
            ax.set_title(name + (" (silent)" if r.silent else ""), fontsize=7)
            if j == 0:
                ax.set_ylabel(label, fontsize=9)
    fig.suptitle(f"{per_class} spectrogram{'s' if per_class != 1 else ''} per class"
                 f"{chr(10) if narrow else ' '}(time ->, low frequencies at the bottom)", fontsize=10)
    fig.tight_layout()
    path = os.path.join(output_dir, PREVIEW_FILENAME)
    try:
        with atomic_files.replacing_file(path) as tmp:
            fig.savefig(tmp, format="png", dpi=80)
    finally:
        plt.close(fig)
    return path
