"""--help grouped the way a user thinks (short), --helpfull in full; every flag in a group."""
import subprocess
import sys
from pathlib import Path

import pytest
from absl import flags

from soundretrain.command_line import FlagGroup, FlagGroups

REPO = Path(__file__).resolve().parents[1]


def _commands():
    from label import cli as label_cli
    from retrain import cli as retrain_cli

    def label_flags():
        fv = flags.FlagValues()
        label_cli.define_flags(fv)
        return fv

    return {"retrain": (retrain_cli.main, retrain_cli.make_flags, retrain_cli.HELP_GROUPS),
            "label_image": (label_cli.main, label_flags, label_cli.HELP_GROUPS)}


@pytest.mark.parametrize("command", ["retrain", "label_image"])
def test_every_flag_is_in_a_help_group(command):
    _, make, groups = _commands()[command]
    members = groups.members(make())
    assert members[""] == [], f"flags without a help group: {[f.name for f in members['']]}"


@pytest.mark.parametrize("command", ["retrain", "label_image"])
def test_short_help_is_grouped_and_helpfull_is_complete(command, capsys):
    main, make, groups = _commands()[command]
    fv = make()
    assert main([command, "--help"]) == 0
    short = capsys.readouterr().out
    assert main([command, "--helpfull"]) == 0
    full = capsys.readouterr().out
    positions = [short.find(f"\n{g.title}:\n") for g in groups.groups if g.brief]
    assert -1 not in positions and positions == sorted(positions)  # groups in their declared order
    for group, members in groups.members(fv).items():
        brief = group and next(g for g in groups.groups if g.key == group).brief
        for flag in members:
            usage = f"--[no]{flag.name}" if flag.boolean else f"--{flag.name}"
            assert (f"  {usage}" in short) == bool(brief), flag.name
            assert f"  {usage}: " in full, flag.name
    # The brief help has one summary per flag; the full one types and defaults.
    assert len(short.splitlines()) < len(full.splitlines())
    assert "(default: '" not in short and "(default: '" in full
    assert "--helpfull" in short


def test_retrain_help_groups_as_asked(capsys):
    from retrain.cli import main

    assert main(["retrain", "--help"]) == 0
    short = capsys.readouterr().out
    sections = {}
    for block in short.split("\n\n"):
        title, _, body = block.partition(":\n")
        sections[title] = body
    assert "--image_dir" in sections["retrain.py's flags (same names, meanings and defaults)"]
    assert "--test_folds" in sections["Splits: which recordings train, validate and test"]
    assert "--hidden_units" in sections["The head: what is trained on the bottlenecks"]
    assert "--saved_model_dir" in sections["Export: the trained model and its labels"]
    assert "flip_left_right" not in short  # compatibility-only: --helpfull
    assert main(["retrain", "--helpfull"]) == 0
    full = capsys.readouterr().out
    assert "Accepted for retrain.py compatibility, ignored:\n  --[no]flip_left_right" in full


def test_a_flag_must_name_a_known_group():
    groups = FlagGroups(FlagGroup("a", "A"), FlagGroup("b", "B", brief=False))
    fv = flags.FlagValues()
    define = groups.definer(fv)
    define("string", "x", "", "X. More words.", group="a")
    define("integer", "y", 3, "Y.", group="b")
    with pytest.raises(ValueError, match="--z: group=None is not one of the help groups a, b"):
        define("string", "z", "", "Z.")
    with pytest.raises(ValueError, match="'c'"):
        define("string", "w", "", "W.", group="c")
    short = groups.help(fv)
    assert short.startswith("A:\n  --x ") and "X." in short and "More words" not in short
    assert "--y" not in short and '"B"' in short
    full = groups.help(fv, full=True)
    assert "B:\n  --y: Y.\n    (default: '3')\n    (an integer)" in full


def test_python_dash_m_label_works_like_python_dash_m_retrain():
    for module in ("label", "retrain"):
        result = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "--helpfull" in result.stdout
