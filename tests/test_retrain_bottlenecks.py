"""The bottleneck cache: batched, reused, invalidated, corruption-proof, resumable;
waveform modules read the manifest's audio; augmented copies are cached too."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from retrain.augment import AugmentSettings, augment_image, plan_copies
from retrain.bottlenecks import (BottleneckStore, compute_augmented_bottlenecks,
                                 compute_bottlenecks, file_sha1, image_to_input, read_image)
from retrain.errors import RetrainError
from retrain.images import list_images
from soundretrain.atomic_files import is_temp_name
from soundretrain.backbones.registry import load_module
from tiny_models import (make_colour_image_folders, make_tiny_image_module,
                         make_tiny_waveform_module, make_tone_spectrogram_dir,
                         write_colour_image)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    return load_module(make_tiny_image_module(tmp_path_factory.mktemp("m") / "tiny"))


@pytest.fixture
def images(tmp_path):
    return list_images(make_colour_image_folders(tmp_path / "img", per_class=10))


def test_batched_equals_one_at_a_time_and_reuses_cache(backbone, images, tmp_path):
    cache = str(tmp_path / "bn")
    feats, computed = compute_bottlenecks(backbone, images.records, cache, batch_size=7,
                                          progress=False)
    assert computed == 20 and feats.shape == (20, backbone.feature_size)
    one = np.stack([backbone.compute(image_to_input(read_image(r.path), 32, 32)[None])[0]
                    for r in images.records[:3]])
    np.testing.assert_allclose(feats[:3], one, rtol=1e-5, atol=1e-6)
    again, computed = compute_bottlenecks(backbone, images.records, cache, progress=False)
    assert computed == 0
    np.testing.assert_array_equal(again, feats)
    files = list(Path(cache).rglob("*.npy"))
    assert len(files) == 20 and not [p for p in Path(cache).rglob("*") if is_temp_name(p.name)]


def test_changed_image_and_corrupt_files_are_recomputed(backbone, images, tmp_path):
    cache = str(tmp_path / "bn")
    feats, _ = compute_bottlenecks(backbone, images.records, cache, progress=False)
    # An image changes: only it is recomputed, and its vector changes.
    changed = images.records[0]
    write_colour_image(changed.path, (10, 250, 10), seed=99)
    store = BottleneckStore(cache, backbone.name, backbone.feature_size)
    feats2, computed = compute_bottlenecks(backbone, images.records, cache, progress=False)
    assert computed == 1 and not np.allclose(feats2[0], feats[0])
    np.testing.assert_array_equal(feats2[1:], feats[1:])
    # Garbage, a truncated file and a wrong-shaped vector are each recomputed.
    files = sorted(Path(cache).rglob("*.npy"))
    files[0].write_bytes(b"not a numpy file")
    files[1].write_bytes(files[1].read_bytes()[:40])
    np.save(files[2], np.zeros(3, np.float32))
    feats3, computed = compute_bottlenecks(backbone, images.records, cache, progress=False)
    assert computed == 3
    np.testing.assert_allclose(feats3, feats2, rtol=1e-5, atol=1e-6)
    assert store.get("0" * 40) is None


def test_well_formed_but_wrong_entries_are_recomputed(backbone, images, tmp_path, capsys):
    """Zeroed or swapped entries used to be trusted (accuracy 85.7 % -> 21.4 %, exit 0)."""
    cache = str(tmp_path / "bn")
    feats, _ = compute_bottlenecks(backbone, images.records, cache, progress=False)
    store = BottleneckStore(cache, backbone.name, backbone.feature_size)
    paths = [Path(store.path(file_sha1(r.path))) for r in images.records[:3]]
    # An entry is a plain .npy record: the vector with its key and checksum.
    entry = np.load(paths[0], allow_pickle=False)
    np.testing.assert_array_equal(entry["vector"], feats[0])
    assert entry["key"].item() == file_sha1(images.records[0].path).encode() and len(entry["sha256"].item()) == 64
    # Zero the vector inside an entry (the file stays well-formed), swap two others.
    raw = bytearray(paths[0].read_bytes())
    raw[-4 * backbone.feature_size:] = bytes(4 * backbone.feature_size)
    paths[0].write_bytes(bytes(raw))
    first, second = paths[1].read_bytes(), paths[2].read_bytes()
    paths[1].write_bytes(second)
    paths[2].write_bytes(first)
    capsys.readouterr()
    again, computed = compute_bottlenecks(backbone, images.records, cache, progress=False)
    assert computed == 3
    np.testing.assert_array_equal(again, feats)
    assert "3 cached bottleneck(s)" in capsys.readouterr().err
    # An older toolkit's entry (a bare vector) is recomputed without a warning.
    np.save(paths[0], feats[0])
    again, computed = compute_bottlenecks(backbone, images.records, cache, progress=False)
    assert computed == 1 and "failed their check" not in capsys.readouterr().err
    np.testing.assert_array_equal(again, feats)


class _RecordsBatches:
    """A backbone whose features of a lone input differ in the sixth decimal, as oneDNN's
    batch-of-one kernels make EfficientNet-Lite0's (measured: up to 1.4e-6); records the
    batch sizes it is given."""

    def __init__(self, backbone):
        self.b, self.sizes = backbone, []
        self.name, self.input_spec, self.feature_size = backbone.name, backbone.input_spec, backbone.feature_size

    def compute(self, x):
        self.sizes.append(len(x))
        out = self.b.compute(x)
        return out + np.float32(1.4e-6) if len(x) == 1 else out


def test_a_resumed_run_is_bit_identical(backbone, images, tmp_path):
    """However the images fall into batches (a run killed and resumed with one image left),
    every vector is the one an uninterrupted run computes."""
    whole, _ = compute_bottlenecks(_RecordsBatches(backbone), images.records, str(tmp_path / "a"),
                                   batch_size=8, progress=False)
    recording = _RecordsBatches(backbone)
    compute_bottlenecks(recording, images.records[:19], str(tmp_path / "b"), batch_size=8, progress=False)
    resumed, computed = compute_bottlenecks(recording, images.records, str(tmp_path / "b"), batch_size=8,
                                            progress=False)
    assert computed == 1 and 1 not in recording.sizes
    np.testing.assert_array_equal(resumed, whole)


class _DiesAfter:
    """The real backbone, killed (as by Ctrl-C) after ``n`` batches."""

    def __init__(self, backbone, n):
        self.b, self.n = backbone, n
        self.name, self.input_spec, self.feature_size = backbone.name, backbone.input_spec, backbone.feature_size

    def compute(self, x):
        if self.n == 0:
            raise KeyboardInterrupt
        self.n -= 1
        return self.b.compute(x)


def test_a_killed_run_resumes_where_it_stopped(backbone, images, tmp_path):
    cache = str(tmp_path / "bn")
    with pytest.raises(KeyboardInterrupt):
        compute_bottlenecks(_DiesAfter(backbone, 2), images.records, cache, batch_size=4,
                            progress=False)
    assert len(list(Path(cache).rglob("*.npy"))) == 8
    _, computed = compute_bottlenecks(backbone, images.records, cache, batch_size=4, progress=False)
    assert computed == 12


def test_unreadable_image_is_one_clear_line(backbone, images, tmp_path):
    Path(images.records[3].path).write_bytes(b"\x89PNG broken")
    with pytest.raises(RetrainError) as err:
        compute_bottlenecks(backbone, images.records, str(tmp_path / "bn"), progress=False)
    assert "cannot read image" in str(err.value) and images.records[3].path in str(err.value)
    assert "\n" not in str(err.value)


def test_concatenated_modules_cache_per_part(backbone, images, tmp_path):
    other = make_tiny_image_module(tmp_path / "other", image_size=24, feature_size=5, seed=4)
    both = load_module(f"{backbone.description()['source']},{other}")
    cache = str(tmp_path / "bn")
    single, _ = compute_bottlenecks(backbone, images.records, cache, progress=False)
    feats, computed = compute_bottlenecks(both, images.records, cache, progress=False)
    assert computed == 20  # only the new part's vectors
    assert feats.shape == (20, backbone.feature_size + 5)
    np.testing.assert_array_equal(feats[:, :backbone.feature_size], single)


def test_waveform_module_reads_source_audio_windows(tmp_path):
    from soundretrain.spectrogram_settings import SpectrogramSettings

    make_tone_spectrogram_dir(tmp_path)
    images = list_images(str(tmp_path / "spec"))
    assert images.from_manifest and images.folds == [1, 2, 3]
    wave = load_module(make_tiny_waveform_module(tmp_path / "w", sample_rate=8000))
    settings = SpectrogramSettings.load_json(tmp_path / "spec" / "spectrogram_config.json")
    feats, computed = compute_bottlenecks(wave, images.records, str(tmp_path / "bn"), settings,
                                          progress=False)
    assert computed == 12 and feats.shape == (12, wave.feature_size)
    labels = np.asarray(images.class_ids())
    # Two windows of one recording are alike; the two tones differ.
    assert np.linalg.norm(feats[labels == 0].mean(0) - feats[labels == 1].mean(0)) > 1e-3
    _, computed = compute_bottlenecks(wave, images.records, str(tmp_path / "bn"), settings,
                                      progress=False)
    assert computed == 0
    # A missing source is one clear line.
    os.unlink(images.records[0].source)
    with pytest.raises(RetrainError, match="source audio"):
        compute_bottlenecks(wave, images.records, str(tmp_path / "bn2"), settings, progress=False)


def test_a_module_at_another_rate_hears_the_model_rate_window_resampled(tmp_path):
    """In a backbone of several rates each clip is decoded and cut at the model's one rate
    (here the spectrograms' 8 kHz) and the window resampled by the shared filter, exactly
    what the audio-in graph and label_image feed the module; the cache keys say so."""
    from retrain.bottlenecks import InputMaker
    from soundretrain.audio import fit_duration, load_audio
    from soundretrain.backbones.registry import ConcatBackbone
    from soundretrain.resample import resample
    from soundretrain.spectrogram_settings import SpectrogramSettings

    make_tone_spectrogram_dir(tmp_path, recordings=2)
    images = list_images(str(tmp_path / "spec"))
    settings = SpectrogramSettings.load_json(tmp_path / "spec" / "spectrogram_config.json")
    wide = load_module(make_tiny_waveform_module(tmp_path / "w16", sample_rate=16000, feature_size=4))
    native = load_module(make_tiny_waveform_module(tmp_path / "w8", sample_rate=8000, feature_size=3, seed=1))
    both = ConcatBackbone([wide, native])  # no image part: the highest rate, 16 kHz
    image = load_module(make_tiny_image_module(tmp_path / "img", image_size=32, feature_size=5))
    with_image = ConcatBackbone([image, wide])  # an image part: the spectrograms' 8 kHz

    feats, computed = compute_bottlenecks(with_image, images.records, str(tmp_path / "bn"), settings,
                                          progress=False)
    assert computed == 2 * len(images.records)
    r = images.records[3]
    window = fit_duration(load_audio(r.source, 8000)[int(r.start * 8000):][:8000], 8000, 1.0)
    np.testing.assert_allclose(feats[3, 5:], wide.compute(resample(window, 8000, 16000)[None])[0], atol=1e-6)

    feats, _ = compute_bottlenecks(both, images.records, str(tmp_path / "bn"), settings, progress=False)
    window16 = fit_duration(load_audio(r.source, 16000)[int(r.start * 16000):][:16000], 16000, 1.0)
    np.testing.assert_allclose(feats[3, :4], wide.compute(window16[None])[0], atol=1e-6)
    np.testing.assert_allclose(feats[3, 4:], native.compute(resample(window16, 16000, 8000)[None])[0],
                               atol=1e-6)
    # Resampled windows are other inputs than decoding at the module's own rate: other keys.
    alone = InputMaker(wide, settings).key(r)
    assert alone == InputMaker(wide, settings, both.parts).key(r)  # 16 kHz is the model rate
    assert InputMaker(wide, settings, with_image.parts).key(r) != alone


def test_waveform_module_needs_a_manifest(tmp_path, images):
    wave = load_module(make_tiny_waveform_module(tmp_path / "w"))
    with pytest.raises(RetrainError, match="needs the source audio|not found"):
        compute_bottlenecks(wave, images.records, str(tmp_path / "bn"), progress=False)


def test_augmented_copies_are_deterministic_cached_and_within_class(backbone, tmp_path):
    images = list_images(make_colour_image_folders(tmp_path / "img", per_class=6,
                                                   windows_per_recording=2))
    ids = images.class_ids()
    settings = AugmentSettings(copies=2, mix_probability=1.0, seed=3)
    train = list(range(len(images.records)))
    plan = plan_copies(images.records, train, settings, ids, lambda i: "all")
    assert len(plan) == 2 * len(train)
    for c in plan:
        assert ids[c.partner] == ids[c.index]
        assert images.records[c.partner].group != images.records[c.index].group
    assert plan == plan_copies(images.records, train, settings, ids, lambda i: "all")
    cache = str(tmp_path / "bn")
    feats, computed = compute_augmented_bottlenecks(backbone, images.records, plan, settings,
                                                    cache, progress=False)
    assert computed == len(plan) and feats.shape == (len(plan), backbone.feature_size)
    again, computed = compute_augmented_bottlenecks(backbone, images.records, plan, settings,
                                                    cache, progress=False)
    assert computed == 0
    np.testing.assert_array_equal(again, feats)
    base, _ = compute_bottlenecks(backbone, images.records, cache, progress=False)
    assert not np.allclose(feats[0], base[plan[0].index])


def test_mixing_partners_stay_in_their_fold():
    from retrain.images import ImageRecord

    records = [ImageRecord(f"/x/{i}.png", f"a/{i}.png", "a", f"g{i}", fold=i % 3) for i in range(30)]
    plan = plan_copies(records, range(30), AugmentSettings(copies=3, mix_probability=1.0),
                       [0] * 30, lambda i: records[i].fold)
    assert all(records[c.partner].fold == records[c.index].fold for c in plan)


def test_augment_image_masks_shift_and_keeps_shape():
    rng = np.random.default_rng(0)
    image = rng.integers(50, 255, (64, 64, 3), dtype=np.uint8)
    image[0, 0] = (1, 2, 3)  # the quietest colour
    settings = AugmentSettings(copies=1, time_masks=1, freq_masks=1, max_mask_fraction=0.25)
    out = augment_image(image, None, seed=5, settings=settings)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert not np.array_equal(out, image)
    assert np.array_equal(out, augment_image(image, None, seed=5, settings=settings))
    assert (out == (1, 2, 3)).all(axis=-1).sum() > 1  # masked with the silence colour
