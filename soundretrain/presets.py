"""Presets: the flag files in ``configs/``, found by name wherever the toolkit is installed.

``spectrograms --preset urbansound8k`` reads ``configs/urbansound8k.cfg`` and
``retrain --preset urbansound8k`` reads ``configs/retrain_urbansound8k.cfg``, exactly as
``--flagfile=<that file>`` at the same place on the command line would (flags after it
override it). In a source checkout the files are read from ``configs/``; an installed wheel
carries them as package data in ``soundretrain/configs/``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

# Preset NAME of each stage -> file name in configs/.
FILE_PATTERNS = {"spectrograms": "{name}.cfg", "retrain": "retrain_{name}.cfg"}
FLAG = "preset"


class PresetError(ValueError):
    """An unknown preset name; the message is one line and lists the known ones."""


def presets_folder() -> Optional[Path]:
    """Where the flag files are: the wheel's package data, else the checkout's configs/."""
    package = Path(__file__).resolve().parent
    for folder in (package / "configs", package.parent / "configs"):
        if folder.is_dir():
            return folder
    return None


def available(stage: str) -> list[str]:
    """The preset names ``stage`` knows, sorted."""
    folder = presets_folder()
    if folder is None:
        return []
    prefix, suffix = FILE_PATTERNS[stage].split("{name}")
    # Another stage's longer prefix marks its files: retrain_urbansound8k.cfg is no
    # spectrograms preset.
    others = [p.split("{name}")[0] for s, p in FILE_PATTERNS.items() if s != stage]
    others = [o for o in others if len(o) > len(prefix) and o.startswith(prefix)]
    names = []
    for path in folder.glob(f"{prefix}*{suffix}"):
        if any(path.name.startswith(o) for o in others):
            continue
        names.append(path.name[len(prefix):len(path.name) - len(suffix)])
    return sorted(n for n in names if n)


def preset_path(stage: str, name: str) -> str:
    """The flag file of preset ``name`` for ``stage``; raises :class:`PresetError`."""
    known = available(stage)
    if name not in known:
        listed = ", ".join(known) if known else "none found: the configs folder is missing"
        what = f"unknown --{FLAG} {name!r}" if name else f"--{FLAG} needs a name"
        raise PresetError(f"{what} (presets of {stage}: {listed}); "
                          "or pass your own flag file with --flagfile=FILE")
    folder = presets_folder()
    assert folder is not None
    return str(folder / FILE_PATTERNS[stage].format(name=name))


def expand_presets(argv: Sequence[str], stage: str) -> tuple[list[str], list[str]]:
    """``argv`` with each ``--preset NAME`` followed by ``--flagfile=<its file>`` in place,
    and the names expanded. Raises :class:`PresetError` for unknown names."""
    out: list[str] = []
    names: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":  # everything after is positional
            out.extend(args[i - 1:])
            break
        head, eq, value = arg.partition("=")
        if head not in (f"--{FLAG}", f"-{FLAG}"):
            out.append(arg)
            continue
        if not eq:
            if i >= len(args):
                raise PresetError(f"--{FLAG} needs a name (presets of {stage}: {', '.join(available(stage))})")
            value = args[i]
            i += 1
        names.append(value)
        out.extend([f"--{FLAG}={value}", f"--flagfile={preset_path(stage, value)}"])
    return out, names


def preset_values(stage: str, name: str) -> dict[str, str]:
    """The flags preset ``name`` of ``stage`` sets: ``{flag name: value text}``."""
    values = {}
    with open(preset_path(stage, name), encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("--") and "=" in line:
                flag, _, value = line[2:].partition("=")
                values[flag] = value
    return values


def set_by_preset(fv, stage: str, flag: str) -> bool:
    """True when ``flag`` has the value the last ``--preset`` gave it (the user did not
    override it), so warnings about flags the user gave can leave it out."""
    name = fv[FLAG].value if FLAG in fv else None
    if not name:
        return False
    try:
        raw = preset_values(stage, name).get(flag)
    except (PresetError, OSError):
        return False
    return raw is not None and fv[flag].parser.parse(raw) == fv[flag].value


def define_preset_flag(fv, stage: str) -> None:
    """Define ``--preset`` on ``fv`` (its help lists the presets); :func:`expand_presets`
    does the work before absl parses."""
    from absl import flags

    names = available(stage)
    example = FILE_PATTERNS[stage].format(name="NAME")
    flags.DEFINE_string(
        FLAG, None,
        f"A preset flag file by name ({', '.join(names) or 'none installed'}): the same as "
        f"--flagfile=configs/{example}, wherever the toolkit is installed. Flags after it "
        "override it.", flag_values=fv)


def check_presets_expanded(value: Optional[str], names: Sequence[str]) -> None:
    """A ``--preset`` line inside a flag file is not expanded: refuse it rather than
    silently ignoring it."""
    if value and value not in names:
        raise PresetError(f"--{FLAG}={value} works on the command line only, not inside a flag "
                          "file (use --flagfile there)")
