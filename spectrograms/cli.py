"""``spectrograms``: labelled audio in, per-class spectrogram images + manifest.csv out.

    spectrograms --preset=urbansound8k --data_dir=UrbanSound8K --output_dir=spec
    spectrograms --dataset=folders --data_dir=my_sounds --output_dir=spec --preview=4

Flags are parsed into a :class:`SpectrogramSettings` and plain arguments; the work is
done by :mod:`spectrograms.datasets` and :mod:`spectrograms.writer`.
"""
from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

from absl import flags

from soundretrain.beam_runner import (BeamError, check_paths_for_runner, configure_filesystems,
                                      define_runner_flags, runner_settings)
from soundretrain.command_line import CommandLineExit, audio_warnings_as_lines, error, parse_flags
from soundretrain.filesystems import is_remote
from soundretrain.presets import define_preset_flag
from spectrograms.datasets import LAYOUTS, DatasetError, list_dataset
from soundretrain.manifest import MANIFEST_FILENAME, read_manifest
from soundretrain.spectrogram_settings import (
    CHANNEL_KINDS,
    IMAGE_FORMATS,
    LONG_CLIP_MODES,
    PAD_MODES,
    SpectrogramSettings,
)
from spectrograms.writer import OutputError, WriteOptions, write_spectrograms

PROG = "spectrograms"
MAX_LISTED = 50  # failures / missing files listed one per line before "... and N more"


def make_flags() -> flags.FlagValues:
    """This CLI's flags, on their own FlagValues (never absl's global FLAGS)."""
    fv = flags.FlagValues()
    d = SpectrogramSettings()

    def define(kind, name, default, help_text, **kw):
        getattr(flags, f"DEFINE_{kind}")(name=name, default=default, help=help_text, flag_values=fv, **kw)

    # Data in and out.
    define("enum", "dataset", "auto", "Dataset layout; auto detects it and says which it chose.",
           enum_values=["auto", *LAYOUTS])
    define("string", "data_dir", None, "Dataset folder (UrbanSound8K, ESC-50, or <class>/<audio file> folders).")
    define("string", "output_dir", None, "Where <label>/<name>.png, manifest.csv and spectrogram_config.json go.")
    define_preset_flag(fv, PROG)
    define("bool", "esc10", False, "ESC-50 only: keep the ESC-10 subset.")
    define("list", "classes", None, "Comma-separated class names to keep (default: all).")
    define("list", "folds", None, "Comma-separated folds to keep (UrbanSound8K, ESC-50; default: all).")
    # Audio.
    define("integer", "sample_rate", d.sample_rate, "Sample rate (Hz) audio is resampled to.", lower_bound=1)
    define("float", "duration", d.duration, "Seconds per image; shorter clips are padded, longer ones cut or split.")
    define("enum", "pad_mode", d.pad_mode,
           "Padding of short clips: repeat (loop the clip) or zero (silence).", enum_values=list(PAD_MODES))
    define("enum", "long_clips", d.long_clips,
           "Clips longer than --duration: cut (keep the start) or split (one image per window).",
           enum_values=list(LONG_CLIP_MODES))
    define("float", "window_hop", d.window_hop, "With --long_clips=split: seconds between windows (default --duration).")
    # Spectrogram.
    define("integer", "n_mels", d.n_mels, "Mel bands.", lower_bound=1)
    define("integer", "n_fft", d.n_fft, "FFT window length in samples.", lower_bound=1)
    define("integer", "hop_length", d.hop_length, "Samples between STFT frames.", lower_bound=1)
    define("float", "fmin", d.fmin, "Lowest mel frequency (Hz).")
    define("float", "fmax", d.fmax, "Highest mel frequency (Hz; default sample_rate / 2).")
    define("float", "top_db", d.top_db, "Dynamic range kept below each clip's maximum (dB).")
    define("list", "channels", list(d.channels),
           "What the image shows: one channel, coloured by --colormap, or three as red, green, "
           f"blue. Each is {'|'.join(CHANNEL_KINDS)}, optionally @N_FFT for its own window, "
           "e.g. db@1024,db@2048,db@4096 or db,delta,delta2.")
    # Image.
    define("integer", "image_size", d.image_size, "Side of the square image in pixels (224 suits EfficientNet-Lite0).")
    define("string", "colormap", d.colormap,
           "matplotlib colormap name (viridis, magma, ...) or gray; colours one channel (unused with three).")
    define("enum", "image_format", d.image_format, "Image file format.", enum_values=list(IMAGE_FORMATS))
    # Running.
    define("integer", "jobs", 0, "Worker processes (0 = all cores).", lower_bound=0)
    define("bool", "overwrite", False, "Redo every image, even up-to-date ones or ones made with other settings.")
    define("bool", "strict", False, "Exit non-zero when any clip fails or is missing.")
    define("integer", "preview", 0, "Also write <output_dir>/preview.png with this many images per class.",
           lower_bound=0)
    # Past one machine: the same work as an Apache Beam pipeline (docs/scale.md).
    define_runner_flags(define)
    return fv


def settings_from_flags(fv: flags.FlagValues) -> SpectrogramSettings:
    """The rendering settings named by the flags (raises ValueError with the reasons)."""
    return SpectrogramSettings(
        sample_rate=fv.sample_rate, duration=fv.duration, pad_mode=fv.pad_mode, long_clips=fv.long_clips,
        window_hop=fv.window_hop, n_mels=fv.n_mels, n_fft=fv.n_fft, hop_length=fv.hop_length, fmin=fv.fmin,
        fmax=fv.fmax, top_db=fv.top_db, image_size=fv.image_size, colormap=fv.colormap,
        image_format=fv.image_format, channels=tuple(fv.channels or ()),
    )


def _err(message: object) -> None:
    error(PROG, message)


def _note(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


def _usage(fv: flags.FlagValues) -> str:
    return (
        f"usage: {PROG} --data_dir=DIR --output_dir=DIR [--dataset=auto|{'|'.join(LAYOUTS)}] [flags]\n"
        f"       {PROG} --preset=urbansound8k|esc50 --data_dir=DIR --output_dir=DIR\n\n"
        "Turns labelled audio into <output_dir>/<label>/<name>.png log-mel spectrogram images,\n"
        "manifest.csv and spectrogram_config.json.\n\n"
        + fv.get_help(include_special_flags=False)
    )


def _parse_folds(values: Optional[Sequence[str]]) -> Optional[list[int]]:
    if not values:
        return None
    try:
        return [int(v) for v in values]
    except ValueError:
        raise ValueError(f"--folds takes whole numbers, not {','.join(values)}") from None


@audio_warnings_as_lines(PROG)
def main(argv: Sequence[str]) -> int:
    """Run the stage; returns the exit status (0 ok, 1 nothing written / failure, 2 bad flags)."""
    fv = make_flags()
    try:
        parse_flags(fv, argv, PROG, lambda: _usage(fv), presets=PROG)
    except CommandLineExit as done:
        return done.code
    for name in ("data_dir", "output_dir"):
        if not fv[name].value:
            _err(f"--{name} is required (see --help)")
            return 2
    try:
        settings = settings_from_flags(fv)
        from soundretrain.render import colormap_lut

        colormap_lut(settings.colormap)
        folds = _parse_folds(fv.folds)
        if fv.window_hop is not None and settings.long_clips != "split":
            raise ValueError("--window_hop applies only with --long_clips=split (it sets the hop between windows)")
        runner = runner_settings(fv.runner, fv.beam_pipeline_args)
        if runner is not None:
            if fv["jobs"].present:
                raise ValueError("--jobs sets the local writer's processes; with --runner=DirectRunner give "
                                 "--beam_pipeline_args=--direct_num_workers=N")
            check_paths_for_runner(runner, {"data_dir": fv.data_dir, "output_dir": fv.output_dir})
            configure_filesystems(runner)
        elif is_remote(fv.output_dir):
            raise ValueError(f"--output_dir {fv.output_dir} is a URL: the local writer writes local folders; "
                             "add --runner (e.g. --runner=DirectRunner) to write through Beam's filesystems")
    except (ValueError, BeamError) as e:
        _err(e)
        return 2

    try:
        listing = list_dataset(fv.data_dir, fv.dataset, classes=fv.classes, folds=folds, esc10=fv.esc10)
    except (DatasetError, OSError) as e:  # OSError: a URL's filesystem failed (no extra, no network)
        _err(e)
        return 1
    _note(listing.how)
    for note in listing.notes:
        _note(note)
    if listing.missing:
        _note(f"{len(listing.missing)} file(s) listed in the metadata are missing, e.g. {listing.missing[0]}")
    if not listing.clips:
        _err(f"nothing to render in {listing.root} ({len(listing.missing)} listed file(s) missing)")
        return 1
    labels = sorted({c.label for c in listing.clips})
    _note(f"{len(listing.clips)} clips in {len(labels)} classes: {', '.join(labels)}")
    from soundretrain.render import empty_mel_bands

    empty = empty_mel_bands(settings)
    if empty:
        shortest = min(n for _, n in settings.channel_windows())
        _note(f"{empty} of the {settings.n_mels} mel bands are empty at n_fft {shortest} and "
              f"{settings.sample_rate} Hz (constant rows in every image): use fewer --n_mels or a larger --n_fft")

    options = WriteOptions(jobs=fv.jobs, overwrite=fv.overwrite)
    try:
        if runner is None:
            summary = write_spectrograms(listing, fv.output_dir, settings, options, log=_note)
        else:
            from spectrograms.beam_pipeline import write_spectrograms_beam

            summary = write_spectrograms_beam(listing, fv.output_dir, settings, runner, options, log=_note)
    except (OutputError, BeamError) as e:
        _err(e)
        return 1
    except OSError as e:  # what the writers do not turn into an OutputError (Beam's manifest)
        reason = e.strerror or " ".join(str(e).split())
        _err(f"cannot write in --output_dir {fv.output_dir}: {f'{e.filename}: ' if e.filename else ''}{reason}")
        return 1
    for source, reason in summary.failed[:MAX_LISTED]:
        _note(f"failed: {source}: {reason}")
    if len(summary.failed) > MAX_LISTED:
        _note(f"failed: ... and {len(summary.failed) - MAX_LISTED} more")
    for path in summary.missing[:MAX_LISTED]:
        _note(f"missing: {path}")
    if len(summary.missing) > MAX_LISTED:
        _note(f"missing: ... and {len(summary.missing) - MAX_LISTED} more")
    print(summary.line(fv.output_dir))
    if summary.interrupted:
        _err("interrupted: finished images are kept in the manifest; run again to continue")
    elif fv.preview and summary.images and is_remote(fv.output_dir):
        _note("preview not written: --preview needs a local --output_dir")
    elif fv.preview and summary.images:
        rows = read_manifest(os.path.join(fv.output_dir, MANIFEST_FILENAME))
        listed = {c.source for c in listing.clips}
        path = write_preview_safely(fv.output_dir, [r for r in rows if r.source in listed], fv.preview)
        if path:
            _note(f"preview: {path}")
    code = summary.exit_code(strict=fv.strict)
    if code == 1 and summary.written + summary.up_to_date == 0:
        _err(f"no image could be written ({len(summary.failed)} failed)")
    return code


def write_preview_safely(output_dir: str, rows, per_class: int) -> Optional[str]:
    from spectrograms.preview import write_preview

    try:
        return write_preview(output_dir, rows, per_class)
    except (OSError, ValueError) as e:
        _note(f"preview not written: {e}")
        return None


def run() -> None:
    """Console-script entry point."""
    try:
        code = main(sys.argv)
    except KeyboardInterrupt:  # before or after the writer, which handles its own
        _err("interrupted")
        code = 130
    sys.exit(code)
