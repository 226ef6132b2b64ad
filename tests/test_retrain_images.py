"""Listing images: class folders (retrain.py) and spectrograms' manifest.csv."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from retrain.errors import RetrainError
from retrain.images import group_from_filename, list_images
from tiny_models import make_colour_image_folders, write_colour_image


def test_class_folders_jpg_jpeg_png_sorted_labels(tmp_path):
    write_colour_image(tmp_path / "zebra" / "a.JPG", (1, 2, 3))
    write_colour_image(tmp_path / "zebra" / "b_nohash_1.jpeg", (1, 2, 3))
    write_colour_image(tmp_path / "apple" / "c.png", (1, 2, 3))
    (tmp_path / "apple" / "notes.txt").write_text("ignored")
    (tmp_path / "README.md").write_text("ignored")
    images = list_images(str(tmp_path))
    assert images.labels == ("apple", "zebra") and not images.from_manifest
    assert [r.relpath for r in images.records] == ["apple/c.png", "zebra/a.JPG", "zebra/b_nohash_1.jpeg"]
    assert images.class_ids() == [0, 1, 1]
    assert images.records[2].group == "b"


def test_group_rule():
    assert group_from_filename("dog_nohash_3.png") == "dog"
    assert group_from_filename("dog.png") == "dog.png"
    # UrbanSound8K / ESC-50 images in class folders: one group per recording (slices of
    # 162540 straddled train and test before).
    assert group_from_filename("162540-1-0-0.png") == group_from_filename("162540-1-0-3.jpg") == "162540"
    assert group_from_filename("1-100032-A-0.png") == group_from_filename("3-100032-B-0.png") == "100032"


def test_manifest_is_preferred_and_carries_folds_and_sources(tmp_path):
    from soundretrain.manifest import ManifestRow, write_manifest

    root = Path(make_colour_image_folders(tmp_path / "spec", per_class=2))
    rows = [ManifestRow(f"{lab}/{lab}_{i}_nohash_0.png", lab, i + 1, f"rec{lab}{i}",
                        f"/a/{lab}{i}.wav", 1.5, 2.0, i == 1)
            for lab in ("blue", "red") for i in range(2)]
    write_manifest(root / "manifest.csv", rows)
    images = list_images(str(root))
    assert images.from_manifest and images.folds == [1, 2]
    r = images.records[0]
    assert (r.group, r.fold, r.source, r.start, r.duration) == ("recblue0", 1, "/a/blue0.wav", 1.5, 2.0)
    assert images.records[1].silent


@pytest.mark.parametrize("setup, words", [
    (lambda root: os.makedirs(root / "green"), "holds no jpg/jpeg/png images"),
    (lambda root: __import__("shutil").rmtree(root / "red"), "only one class"),
])
def test_bad_folders(tmp_path, setup, words):
    root = Path(make_colour_image_folders(tmp_path / "img", per_class=2))
    setup(root)
    with pytest.raises(RetrainError, match=words):
        list_images(str(root))


def test_no_images_and_missing_folder(tmp_path):
    with pytest.raises(RetrainError, match="no images found"):
        list_images(str(tmp_path))
    with pytest.raises(RetrainError, match="not found"):
        list_images(str(tmp_path / "missing"))


def test_malformed_manifest_line(tmp_path):
    root = Path(make_colour_image_folders(tmp_path / "img", per_class=2))
    (root / "manifest.csv").write_text(
        "image,label,fold,group,source,start,duration,silent\nblue/x.png,blue,one,g,s,0,1,0\n")
    with pytest.raises(RetrainError, match="line 2"):
        list_images(str(root))
