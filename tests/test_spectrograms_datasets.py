"""datasets.py: UrbanSound8K, ESC-50 and folders layouts, auto detection, subsets, errors."""
from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf

from spectrograms.datasets import DatasetError, group_of, list_dataset, normalise_label

SR = 8000


def _wav(path, seconds=0.2, freq=440.0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    t = np.arange(int(seconds * SR)) / SR
    sf.write(path, 0.5 * np.sin(2 * np.pi * freq * t), SR)


def make_us8k(root, present_as=".wav"):
    """A tiny UrbanSound8K-shaped tree: 2 folds, 3 classes, one missing file."""
    rows = [
        ("100-3-0-0.wav", "100", 1, 3, "dog_bark"),
        ("100-3-0-1.wav", "100", 1, 3, "dog_bark"),
        ("200-8-0-0.wav", "200", 2, 8, "siren"),
        ("300-1-0-0.wav", "300", 2, 1, "car_horn"),
        ("999-1-0-0.wav", "999", 1, 1, "car_horn"),  # listed but missing
    ]
    os.makedirs(os.path.join(root, "metadata"), exist_ok=True)
    with open(os.path.join(root, "metadata", "UrbanSound8K.csv"), "w") as f:
        f.write("slice_file_name,fsID,start,end,salience,fold,classID,class\n")
        for name, fsid, fold, cid, cls in rows:
            f.write(f"{name},{fsid},0,0.2,1,{fold},{cid},{cls}\n")
    for name, _, fold, _, _ in rows[:-1]:
        _wav(os.path.join(root, "audio", f"fold{fold}", name.replace(".wav", present_as)))
    return root


def make_esc50(root):
    """A tiny ESC-50-shaped tree: 2 folds, 3 categories, one ESC-10 category."""
    rows = [
        ("1-100-A-0.wav", 1, 0, "dog", "True", "100", "A"),
        ("1-100-B-0.wav", 1, 0, "dog", "True", "100", "B"),
        ("2-200-A-5.wav", 2, 5, "cat", "False", "200", "A"),
        ("2-300-A-1.wav", 2, 1, "rooster", "True", "300", "A"),
    ]
    os.makedirs(os.path.join(root, "meta"), exist_ok=True)
    with open(os.path.join(root, "meta", "esc50.csv"), "w") as f:
        f.write("filename,fold,target,category,esc10,src_file,take\n")
        for r in rows:
            f.write(",".join(map(str, r)) + "\n")
            _wav(os.path.join(root, "audio", r[0]))
    return root


def make_folders(root):
    _wav(os.path.join(root, "Dog Bark!", "rec1_nohash_0.wav"))
    _wav(os.path.join(root, "Dog Bark!", "rec1_nohash_1.wav"))
    _wav(os.path.join(root, "Dog Bark!", "solo.flac"))
    _wav(os.path.join(root, "Dog Bark!", "solo.wav"))  # same stem, another format: renamed
    _wav(os.path.join(root, "rain", "r.wav"))
    with open(os.path.join(root, "rain", "notes.txt"), "w") as f:
        f.write("not audio")
    return root


def test_urbansound8k_listing(tmp_path):
    root = make_us8k(str(tmp_path / "us8k"))
    listing = list_dataset(root)
    assert listing.layout == "urbansound8k" and "auto-detected as urbansound8k" in listing.how
    assert [(c.label, c.fold, c.group, c.name) for c in listing.clips] == [
        ("car horn", 2, "300", "300-1-0-0"),
        ("dog bark", 1, "100", "100-3-0-0"),
        ("dog bark", 1, "100", "100-3-0-1"),
        ("siren", 2, "200", "200-8-0-0"),
    ]
    assert all(os.path.isabs(c.source) and os.path.isfile(c.source) for c in listing.clips)
    assert listing.missing == [os.path.join(root, "audio", "fold1", "999-1-0-0.wav")]


def test_urbansound8k_listed_wav_stored_as_flac(tmp_path):
    # The shared copy stores .flac where the official metadata says .wav.
    root = make_us8k(str(tmp_path / "us8k"), present_as=".flac")
    listing = list_dataset(root, "urbansound8k")
    assert len(listing.clips) == 4
    assert all(c.source.endswith(".flac") for c in listing.clips)
    assert listing.clips[0].name == "300-1-0-0"


def test_urbansound8k_folds_and_classes(tmp_path):
    root = make_us8k(str(tmp_path / "us8k"))
    assert {c.fold for c in list_dataset(root, folds=[2]).clips} == {2}
    only = list_dataset(root, classes=["Dog_Bark"])
    assert {c.label for c in only.clips} == {"dog bark"}
    assert only.missing == []  # the missing file is a car horn
    both = list_dataset(root, classes=["car horn"], folds=[1])
    assert both.clips == [] and len(both.missing) == 1


def test_esc50_listing_and_esc10(tmp_path):
    root = make_esc50(str(tmp_path / "esc"))
    listing = list_dataset(root)
    assert listing.layout == "esc50"
    assert [(c.label, c.fold, c.group) for c in listing.clips] == [
        ("cat", 2, "200"), ("dog", 1, "100"), ("dog", 1, "100"), ("rooster", 2, "300"),
    ]
    assert {c.label for c in list_dataset(root, "esc50", esc10=True).clips} == {"dog", "rooster"}
    assert [c.name for c in list_dataset(root, folds=[1]).clips] == ["1-100-A-0", "1-100-B-0"]


def test_auto_finds_the_dataset_one_folder_down(tmp_path):
    make_esc50(str(tmp_path / "ESC-50-master"))
    listing = list_dataset(str(tmp_path))
    assert listing.layout == "esc50" and listing.root == str(tmp_path / "ESC-50-master")


def test_folders_listing(tmp_path):
    root = make_folders(str(tmp_path / "mine"))
    listing = list_dataset(root)
    assert listing.layout == "folders" and "folders" in listing.how
    got = [(c.label, c.fold, c.group, c.name, os.path.basename(c.source)) for c in listing.clips]
    assert got == [
        ("dog bark", None, "rec1", "rec1_nohash_0", "rec1_nohash_0.wav"),
        ("dog bark", None, "rec1", "rec1_nohash_1", "rec1_nohash_1.wav"),
        ("dog bark", None, "solo", "solo", "solo.flac"),
        ("dog bark", None, "solo", "solo_wav", "solo.wav"),
        ("rain", None, "r", "r", "r.wav"),
    ]
    assert any("ignored 1 file" in n for n in listing.notes)


def test_label_and_group_rules_follow_retrain_py():
    assert normalise_label("Dog_Bark") == "dog bark"
    assert normalise_label("  Air--Conditioner 2 ") == "air conditioner 2"
    assert group_of("bird001_nohash_3.wav") == "bird001"
    assert group_of("plain.name.wav") == "plain.name"


@pytest.mark.parametrize(
    "setup,kwargs,message",
    [
        (lambda p: None, {}, "does not exist"),
        (lambda p: p.write_text("x"), {}, "is not a folder"),
        (lambda p: p.mkdir(), {}, "cannot tell what dataset"),
        (lambda p: p.mkdir(), {"dataset": "urbansound8k"}, "not an UrbanSound8K folder"),
        (lambda p: p.mkdir(), {"dataset": "esc50"}, "not an ESC-50 folder"),
        (lambda p: p.mkdir(), {"dataset": "folders"}, "no class folders with audio"),
        (lambda p: make_us8k(str(p)), {"classes": ["cat"]}, "--classes cat not in"),
        (lambda p: make_us8k(str(p)), {"folds": [7]}, "--folds 7 not in"),
        (lambda p: make_us8k(str(p)), {"esc10": True}, "--esc10 applies to ESC-50 only"),
        (lambda p: make_folders(str(p)), {"folds": [1]}, "no folds"),
    ],
)
def test_wrong_data_dir_or_layout_is_one_clear_line(tmp_path, setup, kwargs, message):
    path = tmp_path / "data"
    setup(path)
    with pytest.raises(DatasetError, match=message) as info:
        list_dataset(str(path), **kwargs)
    assert "\n" not in str(info.value)


def test_malformed_metadata(tmp_path):
    root = tmp_path / "us8k"
    (root / "metadata").mkdir(parents=True)
    csv_path = root / "metadata" / "UrbanSound8K.csv"
    csv_path.write_text("slice_file_name,class\na.wav,dog\n")
    with pytest.raises(DatasetError, match="lacks the column"):
        list_dataset(str(root))
    csv_path.write_text("slice_file_name,fsID,start,end,salience,fold,classID,class\na.wav,1,0,1,1,one,3,dog\n")
    with pytest.raises(DatasetError, match="line 2: fold 'one' is not a number"):
        list_dataset(str(root))


@pytest.mark.parametrize("make,csv_rel,column,bad", [
    (make_us8k, "metadata/UrbanSound8K.csv", "class", "dog_bark"),
    (make_esc50, "meta/esc50.csv", "category", "rooster"),
])
def test_a_metadata_label_with_nothing_left_after_normalising_is_one_line(tmp_path, make, csv_rel, column, bad):
    # An empty (or all-punctuation) class cell became the label "" and its image was
    # written to "/<name>.png", the filesystem root.
    root = make(str(tmp_path / "d"))
    path = os.path.join(root, csv_rel)
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace(bad, "__", 1))
    with pytest.raises(DatasetError, match=rf"line \d+: {column} '__' has no letters or digits"):
        list_dataset(root)


def test_audio_in_sub_folders_of_a_class_is_named_not_silently_dropped(tmp_path):
    root = make_folders(str(tmp_path / "mine"))
    _wav(os.path.join(root, "rain", "day2", "r2.wav"))
    listing = list_dataset(root)
    assert not any("day2" in c.source for c in listing.clips)
    assert any("ignored 1 sub-folder(s) of class folders, e.g. rain/day2" in n for n in listing.notes)


def test_class_folders_keep_letters_of_every_script_and_never_merge(tmp_path):
    # "Bär" and "Bör" both became "b r": two classes silently merged into one label.
    root = tmp_path / "mine"
    for folder in ("Bär", "Bör", "Ba\u0308r_night"):  # the last is decomposed, as macOS stores names
        _wav(str(root / folder / "a.wav"))
    listing = list_dataset(str(root))
    assert sorted({c.label for c in listing.clips}) == ["bär", "bär night", "bör"]
    assert normalise_label("Ba\u0308r") == normalise_label("B\u00e4r") == "bär"
    assert normalise_label("Собака_лает") == "собака лает"
    assert normalise_label("犬") == "犬"
    _wav(str(root / "BÄR" / "b.wav"))  # another spelling of an existing class
    with pytest.raises(DatasetError, match="class folders 'BÄR' and 'Bär' .* both make the label 'bär'") as info:
        list_dataset(str(root))
    assert "\n" not in str(info.value) and "rename one" in str(info.value)


def test_metadata_classes_that_make_one_label_are_refused(tmp_path):
    root = make_us8k(str(tmp_path / "us8k"))
    path = os.path.join(root, "metadata", "UrbanSound8K.csv")
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace("100-3-0-1.wav,100,0,0.2,1,1,3,dog_bark", "100-3-0-1.wav,100,0,0.2,1,1,3,Dog Bark"))
    with pytest.raises(DatasetError, match=r"class 'dog_bark' \(line 2\) and 'Dog Bark' \(line 3\) both make"):
        list_dataset(root)


@pytest.mark.parametrize("name, group", [
    ("162540-1-0-0.wav", "162540"),  # UrbanSound8K: fsID-classID-occurrence-slice
    ("162540-1-0-12.flac", "162540"),
    ("7383-3-0-0_w2.png", "7383"),  # a spectrograms window of such a slice
    ("1-100032-A-0.wav", "100032"),  # ESC-50: fold-clip id-take-target
    ("5-9032-B-49.ogg", "9032"),
    ("bird001_nohash_3.wav", "bird001"),  # retrain.py's rule comes first
    ("162540-1-0-0_nohash_1.wav", "162540-1-0-0"),
    ("dog-1.wav", "dog-1"),  # other names: the stem
    ("2024-05-01-1200.wav", "2024-05-01-1200"),  # a date is not a slice name
    ("6-100032-A-0.wav", "6-100032-A-0"),  # ESC-50 has folds 1-5 only
])
def test_dataset_file_names_in_class_folders_group_by_recording(name, group):
    assert group_of(name) == group


def test_urbansound8k_slices_in_class_folders_stay_together(tmp_path):
    # Grouped by stem, slices of one recording landed in train and test with --split hash.
    root = tmp_path / "flat"
    for name in ("162540-1-0-0.wav", "162540-1-0-1.wav", "162540-1-0-2.wav", "99-1-0-0.wav"):
        _wav(str(root / "car_horn" / name))
    for name in ("1-100032-A-0.wav", "2-100032-B-0.wav", "own recording.wav"):
        _wav(str(root / "dog" / name))
    listing = list_dataset(str(root))
    assert [(c.name, c.group) for c in listing.clips] == [
        ("162540-1-0-0", "162540"), ("162540-1-0-1", "162540"), ("162540-1-0-2", "162540"), ("99-1-0-0", "99"),
        ("1-100032-A-0", "100032"), ("2-100032-B-0", "100032"), ("own recording", "own recording"),
    ]
    assert any("grouped 6 file(s) by the recording id" in n for n in listing.notes)


def test_a_file_listed_under_two_classes_is_rejected_with_its_lines(tmp_path):
    root = make_us8k(str(tmp_path / "us8k"))
    path = os.path.join(root, "metadata", "UrbanSound8K.csv")
    with open(path, "a") as f:
        f.write("200-8-0-0.wav,200,0,0.2,1,2,1,car_horn\n")  # also listed as siren
        f.write("100-3-0-0.wav,100,0,0.2,1,1,3,dog_bark\n")  # the same entry twice
    listing = list_dataset(root)
    assert [os.path.basename(c.source) for c in listing.clips] == ["300-1-0-0.wav", "100-3-0-0.wav", "100-3-0-1.wav"]
    [(source, reason)] = listing.rejected
    assert source.endswith("200-8-0-0.wav")
    assert "listed 2 times" in reason and "line 4: class 'siren'" in reason and "line 7: class 'car horn'" in reason
    assert any("lists 1 file(s) twice with the same entries" in n for n in listing.notes)
    assert list_dataset(root, classes=["dog_bark"]).rejected == []  # not part of that selection
    assert len(list_dataset(root, folds=[2]).rejected) == 1
