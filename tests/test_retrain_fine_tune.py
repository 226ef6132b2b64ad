"""--fine_tune_blocks: the trunk/tail split of a backbone, the activation cache,
augmentation on cached maps, training, and an export that holds the tuned blocks (the
.pb, SavedModel and TFLite agree with the in-memory model). Real TensorFlow on a tiny
EfficientNet-Lite built from the real port's code."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from retrain.augment import AugmentSettings
from retrain.cli import main
from soundretrain.backbones.registry import LOCAL_FACTORIES, ConcatBackbone, ModuleError, load_module
from soundretrain.backbones.split import ALL_BLOCKS, FineTunedBackbone, format_blocks, parse_blocks
from tiny_models import (make_colour_image_folders, make_tiny_efficientnet_lite,
                         make_tiny_image_module, make_tiny_waveform_module,
                         make_tone_spectrogram_dir)

TINY = "tiny_efficientnet_lite"


@pytest.fixture(scope="module")
def lite():
    return make_tiny_efficientnet_lite()


@pytest.fixture
def registered(monkeypatch):
    """The tiny network as a registry name, so the retrain command can load it."""
    monkeypatch.setitem(LOCAL_FACTORIES, TINY, "tiny_models:load_tiny_efficientnet_lite")
    return TINY


@pytest.fixture
def image_dir(tmp_path):
    return make_colour_image_folders(tmp_path / "images", per_class=16, windows_per_recording=2)


def images01(n=6, size=32, seed=0):
    return np.random.default_rng(seed).random((n, size, size, 3), np.float32)


# ------------------------------------------------------------------ the split

@pytest.mark.parametrize("blocks", [1, 2, 3, 4, ALL_BLOCKS])
def test_trunk_then_tail_is_the_backbone(lite, blocks):
    x = images01()
    cut = lite.split(blocks)
    maps = cut.compute_trunk(x)
    assert maps.shape == (len(x),) + cut.activation_shape
    np.testing.assert_allclose(cut.tail(maps).numpy(), lite.compute(x), atol=1e-5)
    np.testing.assert_allclose(cut.fine_tuned().compute(x), lite.compute(x), atol=1e-5)


def test_split_shapes_and_names(lite):
    # 32 px -> stem /2 = 16 -> block1 /2 = 8 -> block3 /2 = 4.
    assert lite.fine_tunable_blocks == 4
    assert (lite.split(1).cut, lite.split(1).activation_shape) == ("block03", (8, 8, 12))
    assert (lite.split(3).cut, lite.split(3).activation_shape) == ("block01", (16, 16, 8))
    assert lite.split(4).activation_shape == (16, 16, 8)
    assert lite.split(ALL_BLOCKS).activation_shape == (32, 32, 3) and not lite.split(ALL_BLOCKS).cached
    assert lite.split(2).cache_name == f"{TINY}.block02"


def test_tail_weights_are_copies(lite):
    x = images01(2)
    before = lite.compute(x)
    cut = lite.split(2)
    for v in cut.tail.trainable_variables:
        v.assign(v * 0.5)
    np.testing.assert_array_equal(lite.compute(x), before)
    assert not np.allclose(cut.fine_tuned().compute(x), before)
    # Features cached under a tuned backbone's name belong to these weights only.
    assert cut.fine_tuned().name != lite.split(2).fine_tuned().name
    assert cut.fine_tuned().name.startswith(f"{TINY}+fine_tuned_2-")
    # Only the tail's blocks and the last convolution are trainable.
    names = {v.name.split(":")[0] for v in cut.tail.trainable_variables}
    assert names and all(n.startswith(("block02_", "block03_", "head_")) for n in names)


@pytest.mark.parametrize("blocks", [0, 5, -1, "some"])
def test_bad_block_counts_are_one_line(lite, blocks):
    with pytest.raises(ModuleError, match=r"has 4 blocks to fine-tune: --fine_tune_blocks takes 1 to 4"):
        lite.split(blocks)


def test_parse_blocks():
    assert parse_blocks("0") == 0 and parse_blocks("3") == 3 and parse_blocks(" ALL ") == ALL_BLOCKS
    assert parse_blocks("efficientnet_lite0:5, aisfx:1") == {"efficientnet_lite0": 5, "aisfx": 1}
    assert parse_blocks("aisfx:all") == {"aisfx": ALL_BLOCKS} and parse_blocks("aisfx:0") == 0
    assert format_blocks(parse_blocks("a:5,b:all")) == "a:5,b:all"
    for bad in ("-2", "three", "1.5", "aisfx:two", ":3", "aisfx:1,aisfx:2", "aisfx:-1"):
        with pytest.raises(ValueError, match="--fine_tune_blocks"):
            parse_blocks(bad)


def test_modules_that_cannot_be_cut_say_why(tmp_path, lite):
    hub_like = load_module(make_tiny_image_module(tmp_path / "tiny"))
    with pytest.raises(ModuleError, match=r"cannot be fine-tuned \(its blocks cannot be reached"):
        hub_like.split(1)
    wave = load_module(make_tiny_waveform_module(tmp_path / "wave"))
    with pytest.raises(ModuleError, match=r"cannot be fine-tuned \(its blocks cannot be reached"):
        wave.split(1)
    with pytest.raises(ModuleError, match="cut part by part"):
        ConcatBackbone([lite, hub_like]).split(1)


def test_plan_cuts_picks_parts(tmp_path, lite):
    from retrain.errors import RetrainError
    from retrain.fine_tune import plan_cuts

    wave = load_module(make_tiny_waveform_module(tmp_path / "wave"))
    both = ConcatBackbone([wave, lite])
    (index, cut), = plan_cuts(both, 2)  # a bare count: the image network
    assert index == 1 and cut.backbone is lite and cut.blocks == 2
    (index, cut), = plan_cuts(both, {TINY: ALL_BLOCKS})
    assert index == 1 and not cut.cached
    with pytest.raises(RetrainError, match=r"names aisfx, which is not a module of .*its modules: "):
        plan_cuts(both, {"aisfx": 1})
    with pytest.raises(RetrainError, match=r"cannot be fine-tuned with a bare block count: none is an "
                                           r"image network that can be cut; name the module and its "
                                           r"blocks, e\.g\. --fine_tune_blocks"):
        plan_cuts(ConcatBackbone([wave, wave]), 1)
    with pytest.raises(RetrainError, match="cannot be fine-tuned"):
        plan_cuts(both, {wave.name: 1})


# ------------------------------------------------------------------ the activation cache

def test_activation_cache_is_content_addressed_float16_and_resumable(tmp_path, lite, image_dir,
                                                                     monkeypatch):
    from retrain import fine_tune
    from retrain.images import list_images

    records = list_images(image_dir).records
    cut = lite.split(2)
    bn = tmp_path / "bn"
    calls = []
    original = fine_tune._Trunk.compute

    def failing_after_one_batch(self, inputs):
        calls.append(len(inputs))
        if len(calls) > 1:
            raise KeyboardInterrupt  # killed mid-way
        return original(self, inputs)

    monkeypatch.setattr(fine_tune._Trunk, "compute", failing_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        fine_tune.compute_activations(cut, records, str(bn), batch_size=8, progress=False)
    monkeypatch.setattr(fine_tune._Trunk, "compute", original)
    files = list((bn / cut.cache_name).rglob("*.npy"))
    assert len(files) == 8  # the first batch survived, nothing half-written
    assert not [f for f in (bn / cut.cache_name).rglob(".*") if f.is_file()]  # no temp files
    maps, computed = fine_tune.compute_activations(cut, records, str(bn), batch_size=8, progress=False)
    assert computed == len(records) - 8 and maps.dtype == np.float16
    assert maps.shape == (len(records),) + cut.activation_shape
    # float16 keeps the features within about 1e-3 of the float32 maps.
    x = np.stack([np.asarray(__import__("PIL.Image").Image.open(r.path).convert("RGB"),
                             np.float32) / 255 for r in records[:4]])
    np.testing.assert_allclose(cut.tail(maps[:4].astype(np.float32)).numpy(), lite.compute(x),
                               atol=1e-2, rtol=1e-3)
    # A second run reads everything; a corrupt entry is recomputed.
    files[0].write_bytes(b"garbage")
    again, computed = fine_tune.compute_activations(cut, records, str(bn), progress=False)
    assert computed == 1
    np.testing.assert_array_equal(again, maps)
    # Another cut caches elsewhere; the same images in another folder share entries.
    copy = Path(tmp_path / "copy")
    os.rename(image_dir, copy)
    _, computed = fine_tune.compute_activations(cut, list_images(str(copy)).records, str(bn),
                                                progress=False)
    assert computed == 0


def test_full_fine_tuning_reads_images_and_caches_nothing(tmp_path, lite, image_dir):
    from retrain.fine_tune import compute_activations
    from retrain.images import list_images

    records = list_images(image_dir).records
    images, computed = compute_activations(lite.split(ALL_BLOCKS), records, str(tmp_path / "bn"),
                                           progress=False)
    assert images.dtype == np.uint8 and images.shape == (len(records), 32, 32, 3)
    assert computed == 0 and not (tmp_path / "bn").exists()


# ------------------------------------------------------------------ augmentation on maps

def test_map_augmentation_rolls_time_masks_with_silence_and_mixes():
    import tensorflow as tf

    from retrain.fine_tune import augment_maps

    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 5, 7, 3)).astype(np.float32)
    partners = rng.normal(size=x.shape).astype(np.float32)
    silence = np.full((5, 7, 3), 42.0, np.float32)
    seed = tf.constant([3, 4], tf.int64)

    def run(**options):
        settings = AugmentSettings(**dict(dict(time_shift=False, time_masks=0, freq_masks=0,
                                               mix_probability=0.0), **options))
        return augment_maps(tf.constant(x), tf.constant(partners), seed, settings,
                            tf.constant(silence)).numpy()

    np.testing.assert_array_equal(run(), x)
    rolled = run(time_shift=True)
    shifts = set()
    for a, b in zip(rolled, x):  # each example is its own map rolled along time (columns)
        k = next(k for k in range(7) if np.array_equal(a, np.roll(b, k, axis=1)))
        shifts.add(k)
    assert len(shifts) > 2
    masked = run(time_masks=2, freq_masks=2, max_mask_fraction=0.3)
    changed = masked != x
    assert changed.any() and np.all(masked[changed] == 42.0)
    # Masked bands are whole columns (time) or whole rows (frequency).
    for a, b in zip(masked, x):
        cols = np.all(a == 42.0, axis=(0, 2))
        rows = np.all(a == 42.0, axis=(1, 2))
        assert np.array_equal(a[:, ~cols][~rows], b[:, ~cols][~rows])
    mixed = run(mix_probability=1.0, max_mix_weight=0.4)
    weight = (mixed - x)[:, 0, 0, 0] / (partners - x)[:, 0, 0, 0]
    assert np.all((weight > 0.099) & (weight < 0.401))
    np.testing.assert_allclose(mixed, x + weight[:, None, None, None] * (partners - x), atol=1e-5)
    np.testing.assert_array_equal(run(time_shift=True, time_masks=2), run(time_shift=True, time_masks=2))


def test_map_augmentation_along_rows_is_the_transposed_one():
    """Maps whose time runs down the rows (aiSFX: frames x mels) are shifted and masked
    along the rows: exactly the column recipe on the transposed maps."""
    import tensorflow as tf

    from retrain.fine_tune import augment_maps

    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 6, 4, 2)).astype(np.float32)
    partners = rng.normal(size=x.shape).astype(np.float32)
    silence = rng.normal(size=(6, 4, 2)).astype(np.float32)
    settings = AugmentSettings(time_masks=1, freq_masks=1, max_mask_fraction=0.5)
    seed = tf.constant([1, 2], tf.int64)
    rows = augment_maps(tf.constant(x), tf.constant(partners), seed, settings, tf.constant(silence),
                        time_axis=1).numpy()
    t = (0, 2, 1, 3)
    columns = augment_maps(tf.constant(x.transpose(t)), tf.constant(partners.transpose(t)), seed,
                           settings, tf.constant(silence.transpose(1, 0, 2))).numpy()
    np.testing.assert_array_equal(rows, columns.transpose(t))
    assert not np.array_equal(rows, x)


# ------------------------------------------------------------------ the command

def ft_args(tmp_path, module, image_dir, *extra):
    return ["retrain", f"--image_dir={image_dir}", f"--tfhub_module={module}",
            f"--bottleneck_dir={tmp_path / 'bn'}", f"--summaries_dir={tmp_path / 'ts'}",
            f"--output_graph={tmp_path / 'out' / 'graph.pb'}",
            f"--output_labels={tmp_path / 'out' / 'labels.txt'}",
            f"--saved_model_dir={tmp_path / 'out' / 'saved_model'}",
            f"--output_tflite={tmp_path / 'out' / 'model.tflite'}",
            f"--checkpoint_path={tmp_path / 'ck' / 'model'}",
            "--how_many_training_steps=200", "--eval_step_interval=50", "--optimizer=adam",
            "--learning_rate=0.01",
            "--testing_percentage=25", "--validation_percentage=25",
            "--fine_tune_steps=20", "--fine_tune_batch_size=8", "--fine_tune_learning_rate=0.01",
            "--fine_tune_warmup_steps=2", "--random_seed=3", "--noprogress", "--split=hash", *extra]


def _keep_exported(monkeypatch) -> dict:
    """Fills in the backbone and head the run exports (the in-memory model)."""
    import retrain.core as core

    captured = {}
    original = core.export

    def keep(settings, prepared, head, *args, **kwargs):
        captured.update(backbone=prepared.backbone, head=head)
        return original(settings, prepared, head, *args, **kwargs)

    monkeypatch.setattr(core, "export", keep)
    return captured


def test_fine_tuned_export_agrees_with_the_in_memory_model(tmp_path, registered, image_dir,
                                                           capsys, monkeypatch):
    """The .pb, SavedModel and TFLite hold the tuned blocks: all three give the in-memory
    model's probabilities, which differ from the untuned backbone's."""
    from label.models import load_labeler

    captured = _keep_exported(monkeypatch)
    assert main(ft_args(tmp_path, registered, image_dir, "--fine_tune_blocks=2")) == 0
    out = capsys.readouterr().out
    assert "Fine-tuning 2 block(s) of tiny_efficientnet_lite from cached activations [8, 8, 12]" in out
    assert "Fine-tuning with a fresh head: 20 steps of 8" in out
    assert "Fine-tuning step 20/20: train accuracy" in out and "validation accuracy" in out
    assert "Final test accuracy = 100.0%" in out
    backbone, head = captured["backbone"], captured["head"]
    assert isinstance(backbone, FineTunedBackbone)

    x = images01(8, seed=5)
    expected = head.predict(backbone.compute(x))
    untuned = head.predict(make_tiny_efficientnet_lite().compute(x))
    assert np.abs(expected - untuned).max() > 1e-3  # the tuned blocks matter
    for name, atol in (("graph.pb", 1e-5), ("saved_model", 1e-5), ("model.tflite", 1e-4)):
        got = load_labeler(str(tmp_path / "out" / name)).predict(x)
        np.testing.assert_allclose(got, expected, atol=atol, err_msg=name)
    # Fine-tuning's curves sit in the run's TensorBoard folder beside the head's.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, = (tmp_path / "ts").iterdir()
    tags = set()
    for side in ("train", "validation"):
        events = EventAccumulator(str(run / side)).Reload()
        tags |= {f"{side}/{t}" for t in events.Tags()["tensors"]}
    assert {"train/fine_tune/accuracy", "train/fine_tune/learning_rate",
            "validation/fine_tune/accuracy"} <= tags
    sidecar = json.loads((tmp_path / "out" / "graph.pb.json").read_text())
    assert sidecar["module"]["fine_tuned_blocks"] == 2
    assert sidecar["module"]["fine_tune_cut"] == "block02"
    # The checkpoint holds the tuned blocks beside the head.
    import tensorflow as tf

    names = [n for n, _ in tf.train.list_variables(str(tmp_path / "ck" / "model"))]
    assert any(n.startswith("fine_tuned_tail/") for n in names)
    assert any(n.startswith("head/") for n in names)


def test_same_seed_repeats_a_fine_tuned_run(tmp_path, registered, image_dir, capsys):
    """With mixup and augmented copies (whose features come from the tuned blocks)."""
    def lines():
        assert main(ft_args(tmp_path, registered, image_dir, "--fine_tune_blocks=1",
                            "--augmentation_copies=1", "--fine_tune_mixup=0.4",
                            "--output_graph=", "--saved_model_dir=", "--output_tflite=")) == 0
        out = capsys.readouterr().out
        return [l.split(": ", 1)[1] for l in out.splitlines() if "accuracy" in l and ": " in l]

    first = lines()
    assert first and first == lines()


@pytest.mark.parametrize("head,words", [("fresh", "a fresh head"), ("trained", "the trained head")])
def test_epochs_set_the_steps_and_the_head_can_be_the_trained_one(tmp_path, registered, image_dir,
                                                                  capsys, head, words):
    assert main(ft_args(tmp_path, registered, image_dir, "--fine_tune_blocks=1", "--fine_tune_steps=0",
                        "--fine_tune_epochs=3", f"--fine_tune_head={head}", "--output_graph=",
                        "--saved_model_dir=", "--output_tflite=")) == 0
    out = capsys.readouterr().out
    # 14 training images (the hash split's): 3 epochs of batches of 8 are 6 steps (3.4 epochs).
    assert f"Fine-tuning with {words}: 6 steps of 8 (3.4 epochs of 14 training examples)" in out
    assert "Fine-tuning step 6/6" in out


def _tone_args(tmp_path, module, *extra):
    """retrain on tone recordings (the waveform modules tell them apart), fold 3 to test,
    the head-only exports a waveform module needs."""
    return ["retrain", f"--image_dir={tmp_path / 'spec'}", f"--tfhub_module={module}",
            f"--bottleneck_dir={tmp_path / 'bn'}", f"--summaries_dir={tmp_path / 'ts'}",
            "--split=folds", "--test_folds=3", "--validation_percentage=0",
            f"--saved_model_dir={tmp_path / 'out' / 'saved_model'}",
            f"--output_tflite={tmp_path / 'out' / 'model.tflite'}",
            "--how_many_training_steps=50", "--eval_step_interval=25", "--fine_tune_steps=4",
            "--fine_tune_batch_size=4", "--fine_tune_learning_rate=0.01", "--fine_tune_warmup_steps=1",
            "--random_seed=2", "--noprogress", *extra]


def test_a_concatenation_tunes_its_image_network_and_head_only_exports_carry_it(
        tmp_path, registered, capsys, monkeypatch):
    """The presets' case: waveform and image modules side by side. A bare K tunes the
    image network; the head sees the waveform module's cached features beside the tuned
    tail's. The export is head-only (no single input feeds both), and its SavedModel and
    TFLite carry the tuned network as a signature, which label_image runs: the same
    features and probabilities as the in-memory model."""
    from label.models import CarriedPart, load_labeler
    from soundretrain.backbones.registry import SavedModelBackbone

    make_tone_spectrogram_dir(tmp_path)
    wave = make_tiny_waveform_module(tmp_path / "wave")
    captured = _keep_exported(monkeypatch)
    assert main(_tone_args(tmp_path, f"{wave},{registered}", "--fine_tune_blocks=1")) == 0
    out = capsys.readouterr().out
    assert "Fine-tuning 1 block(s) of tiny_efficientnet_lite from cached activations" in out
    backbone, head = captured["backbone"], captured["head"]
    assert isinstance(backbone, ConcatBackbone) and isinstance(backbone.parts[0], SavedModelBackbone)
    assert isinstance(backbone.parts[1], FineTunedBackbone)
    assert backbone.feature_size == head.feature_size == 6 + 16

    images = images01(5, seed=8)
    untuned = make_tiny_efficientnet_lite().compute(images)
    tuned = backbone.parts[1].compute(images)
    assert np.abs(tuned - untuned).max() > 1e-4
    features = np.concatenate([np.random.default_rng(2).normal(size=(5, 6)).astype(np.float32), tuned], 1)
    for name, atol in (("saved_model", 1e-5), ("model.tflite", 1e-4)):
        labeler = load_labeler(str(tmp_path / "out" / name))
        assert labeler.head_only and labeler.input_kind == "audio"
        carried = labeler.backbone.parts[1]
        assert isinstance(carried, CarriedPart) and carried.signature == "part_1"
        assert not isinstance(labeler.backbone.parts[0], CarriedPart)  # reloaded by its folder
        np.testing.assert_allclose(carried.compute(images), tuned, atol=atol, err_msg=name)
        np.testing.assert_allclose(labeler.predict_features(features), head.predict(features),
                                   atol=atol, err_msg=name)
    sidecar = json.loads((tmp_path / "out" / "model.tflite.json").read_text())
    assert [p.get("signature") for p in sidecar["module"]["parts"]] == [None, "part_1"]
    assert sidecar["module"]["parts"][1]["fine_tuned_blocks"] == 1


def test_a_sidecar_naming_a_missing_signature_is_one_line(tmp_path, registered, monkeypatch):
    from label.models import ModelLoadError, load_labeler
    from soundretrain.sidecar import SAVED_MODEL_SIDECAR

    make_tone_spectrogram_dir(tmp_path)
    wave = make_tiny_waveform_module(tmp_path / "wave")
    assert main(_tone_args(tmp_path, f"{wave},{registered}", "--fine_tune_blocks=1",
                           "--output_tflite=")) == 0
    path = tmp_path / "out" / "saved_model" / SAVED_MODEL_SIDECAR
    path.write_text(path.read_text().replace('"part_1"', '"part_7"'))
    with pytest.raises(ModelLoadError, match="lacks the signature 'part_7' its sidecar names"):
        load_labeler(str(tmp_path / "out" / "saved_model"))


@pytest.mark.parametrize("blocks,shape", [(1, (12, 12, 256)), (3, (50, 48, 64)),
                                          (ALL_BLOCKS, (100, 96, 1))])
def test_aisfx_trunk_then_tail_is_the_backbone(blocks, shape):
    """aiSFX (random weights, the real port) cut before its last blocks: maps of frames x
    mels (time down the rows; a short clip padded to 100 frames), the tail over the
    trunk gives its features."""
    from tiny_models import load_fake_aisfx

    backbone = load_fake_aisfx()
    y = np.random.default_rng(4).normal(0, 0.1, (2, 30000)).astype(np.float32)
    cut = backbone.split(blocks, num_samples=30000)
    maps = cut.compute_trunk(y)
    assert cut.time_axis == 1 and cut.activation_shape == shape == maps.shape[1:]
    np.testing.assert_allclose(cut.tail(maps).numpy(), backbone.compute(y), rtol=1e-5, atol=1e-5)
    assert cut.fine_tuned().input_spec.num_samples == 30000
    with pytest.raises(ModuleError, match=r"aisfx has 4 blocks to fine-tune: --fine_tune_blocks takes 1 to 4"):
        backbone.split(5, num_samples=30000)
    with pytest.raises(ModuleError, match="cut for windows of a fixed length"):
        backbone.split(1)


@pytest.mark.slow
def test_aisfx_fine_tunes_its_last_block_and_exports_carry_it(tmp_path, capsys, monkeypatch):
    """aiSFX's last block trained from cached maps; its head-only exports carry the tuned
    network, and label_image's probabilities from sound match the in-memory model's."""
    from label.models import CarriedPart, load_labeler
    from tiny_models import load_fake_aisfx

    backbone = load_fake_aisfx()
    monkeypatch.setitem(LOCAL_FACTORIES, "fake_aisfx", "tiny_models:load_fake_aisfx")
    make_tone_spectrogram_dir(tmp_path)
    captured = _keep_exported(monkeypatch)
    assert main(_tone_args(tmp_path, "fake_aisfx", "--fine_tune_blocks=aisfx:1")) == 0
    out = capsys.readouterr().out
    assert "Fine-tuning 1 block(s) of aisfx from cached activations [12, 12, 256]" in out
    tuned, head = captured["backbone"], captured["head"]
    assert isinstance(tuned, FineTunedBackbone) and tuned.input_spec.kind == "waveform"
    window = np.random.default_rng(5).normal(0, 0.1, (2, 44100)).astype(np.float32)
    assert np.abs(tuned.compute(window) - backbone.compute(window)).max() > 1e-5
    expected = head.predict(tuned.compute(window))
    for name, atol in (("saved_model", 1e-5), ("model.tflite", 1e-4)):
        labeler = load_labeler(str(tmp_path / "out" / name))
        assert isinstance(labeler.backbone, CarriedPart) and labeler.input_kind == "waveform"
        np.testing.assert_allclose(labeler.predict(window), expected, atol=atol, err_msg=name)


def test_a_carried_part_that_is_not_tensorflow_is_refused(tmp_path):
    from soundretrain.backbones.registry import Backbone, InputSpec
    from soundretrain.export import ExportError, export_model

    class Opaque(Backbone):
        name, input_spec, feature_size, reloadable = "opaque", InputSpec("waveform", sample_rate=8000), 4, False

        def compute(self, inputs):
            return np.zeros((len(inputs), 4), np.float32)

    with pytest.raises(ExportError, match="cannot be loaded again by name and does not run in TensorFlow"):
        export_model(Opaque(), None, ["a", "b"], {}, saved_model_dir=str(tmp_path / "m"))
    assert not (tmp_path / "m").exists()


def test_full_fine_tuning_from_images(tmp_path, registered, image_dir, capsys):
    assert main(ft_args(tmp_path, registered, image_dir, "--fine_tune_blocks=all",
                        "--saved_model_dir=", "--output_tflite=")) == 0
    out = capsys.readouterr().out
    assert "Fine-tuning 4 block(s) of tiny_efficientnet_lite from the images [32, 32, 3]" in out
    assert "Final test accuracy = 100.0%" in out
    assert not (tmp_path / "bn" / f"{TINY}.image").exists()


def test_cross_validation_fine_tunes_per_fold(tmp_path, registered, capsys):
    from soundretrain.manifest import ManifestRow, write_manifest
    from tiny_models import COLOURS, write_colour_image

    root = tmp_path / "spec"
    rows = []
    for c, label in enumerate(("red", "blue")):
        for k in range(12):
            rel = f"{label}/{label}{k}.png"
            write_colour_image(root / rel, COLOURS[label], seed=100 * c + k)
            rows.append(ManifestRow(rel, label, k % 3 + 1, f"{label}{k}", "", 0.0, 1.0, False))
    write_manifest(root / "manifest.csv", rows)
    args = ["retrain", f"--image_dir={root}", f"--tfhub_module={registered}",
            f"--bottleneck_dir={tmp_path / 'bn'}", f"--summaries_dir={tmp_path / 'ts'}",
            "--split=folds", "--cross_validate", "--how_many_training_steps=60",
            "--learning_rate=0.05", "--fine_tune_blocks=1", "--fine_tune_steps=5",
            "--fine_tune_batch_size=8", "--fine_tune_keep_best", "--random_seed=1", "--noprogress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("Fine-tuning 1 block(s)") == 3  # one tail per test fold
    assert out.count("Fine-tuning step 5/5") == 3
    # --fine_tune_keep_best keeps each fold's best validation step, 0 included.
    assert len(re.findall(r"Fine-tuning: kept the tail and head of step \d", out)) == 3
    assert "Cross-validation accuracy = " in out


@pytest.mark.parametrize("module,words", [
    ("hub", "cannot be fine-tuned (its blocks cannot be reached"),
    ("tiny", "has 4 blocks to fine-tune: --fine_tune_blocks takes 1 to 4 or 'all', not 9"),
])
def test_modules_that_cannot_fine_tune_fail_in_one_line(tmp_path, registered, image_dir, capsys,
                                                        module, words):
    handle = str(make_tiny_image_module(tmp_path / "hub")) if module == "hub" else registered
    blocks = "1" if module == "hub" else "9"
    assert main(ft_args(tmp_path, handle, image_dir, f"--fine_tune_blocks={blocks}")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and err.startswith("retrain: error:")


def test_diverging_fine_tuning_stops_before_the_export(tmp_path, registered, image_dir, capsys):
    assert main(ft_args(tmp_path, registered, image_dir, "--fine_tune_blocks=1",
                        "--fine_tune_learning_rate=1e38", "--fine_tune_weight_decay=0",
                        "--fine_tune_steps=10", "--fine_tune_warmup_steps=0")) == 1
    err = capsys.readouterr().err
    assert "fine-tuning diverged at step" in err and "nothing was exported" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra,words", [
    ("--fine_tune_blocks=two", "--fine_tune_blocks takes a number of blocks or 'all'"),
    ("--fine_tune_blocks=-1", "--fine_tune_blocks"),
    ("--fine_tune_steps=-1", "--fine_tune_steps must be >= 0"),
    ("--fine_tune_epochs=0", "--fine_tune_epochs must be positive"),
    ("--fine_tune_mask_fraction=1.5", "--fine_tune_mask_fraction must be in [0, 1]"),
    ("--fine_tune_epochs=nan", "--fine_tune_epochs must be a finite number"),
    ("--fine_tune_blocks=tiny:x", "--fine_tune_blocks takes a number of blocks or 'all'"),
    ("--fine_tune_head=sometimes", "fine_tune_head"),
    ("--fine_tune_learning_rate=0", "--fine_tune_learning_rate must be positive"),
    ("--fine_tune_batch_size=-4", "--fine_tune_batch_size must be positive"),
    ("--fine_tune_mixup=-0.2", "--fine_tune_mixup must be >= 0"),
])
def test_bad_fine_tuning_flags_exit_2(tmp_path, registered, image_dir, capsys, extra, words):
    args = ft_args(tmp_path, registered, image_dir, "--fine_tune_blocks=1") + [extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1
