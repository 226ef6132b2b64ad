"""What the toolkit's three commands share: absl flag parsing with help grouped the way a
user thinks (short ``--help``, full ``--helpfull``), and errors as one line on stderr (never
a traceback).

Each command declares its help groups once (:class:`FlagGroups`) and names the group where it
defines a flag, so a new flag lands in the right place of the help by saying so::

    GROUPS = FlagGroups(FlagGroup("inputs", "Inputs"),
                        FlagGroup("compat", "Accepted and ignored", brief=False))
    define = GROUPS.definer(fv)
    define("string", "image", None, "Image file(s) to label.", group="inputs")
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import signal
import sys
import textwrap
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

from absl import flags

HELP_ARGS = ("-h", "--help", "-help", "--helpfull", "--helpshort")
FULL_HELP_ARGS = ("--helpfull",)
_SPECIAL_FLAGS = ("flagfile", "undefok", "help", "helpfull", "helpshort", "helpxml")
_GROUP_ATTRIBUTE = "soundretrain_help_group"  # set on absl's Flag objects


@dataclass(frozen=True)
class FlagGroup:
    """A heading of the help: the flags defined with ``group=key`` are listed under ``title``.
    ``brief=False`` groups (compatibility-only flags) appear only in ``--helpfull``."""

    key: str
    title: str
    brief: bool = True


class FlagGroups:
    """A command's help groups, in the order its help lists them."""

    def __init__(self, *groups: FlagGroup) -> None:
        self.groups = tuple(groups)
        if len(set(self.keys())) != len(self.groups):
            raise ValueError(f"duplicate help group keys: {self.keys()}")

    def keys(self) -> tuple[str, ...]:
        return tuple(g.key for g in self.groups)

    def definer(self, fv: flags.FlagValues) -> Callable[..., None]:
        """``define(kind, name, default, help_text, group=key, **kw)``: absl's
        ``DEFINE_<kind>`` on ``fv`` plus the flag's help group. A missing or unknown group is
        a ValueError at definition, so no flag falls out of the help."""

        def define(kind: str, name: str, default, help_text: str, *,
                   group: Optional[str] = None, **kw) -> None:
            self._check(group, name)
            getattr(flags, f"DEFINE_{kind}")(name=name, default=default, help=help_text,
                                             flag_values=fv, **kw)
            setattr(fv[name], _GROUP_ATTRIBUTE, group)

        return define

    def assign(self, fv: flags.FlagValues, group: str, *names: str) -> None:
        """Put flags that were defined with absl's ``DEFINE_*`` directly into ``group``."""
        for name in names:
            self._check(group, name)
            setattr(fv[name], _GROUP_ATTRIBUTE, group)

    def _check(self, group: Optional[str], name: str) -> None:
        if group not in self.keys():
            raise ValueError(f"flag --{name}: group={group!r} is not one of the help groups "
                             f"{', '.join(self.keys())}")

    def members(self, fv: flags.FlagValues) -> dict[str, list]:
        """Group key -> its flags in definition order; "" -> flags in no group."""
        out: dict[str, list] = {key: [] for key in self.keys()}
        out[""] = []
        seen: set[int] = set()
        for name in fv:
            flag = fv[name]
            if name in _SPECIAL_FLAGS or id(flag) in seen:  # short names alias a flag
                continue
            seen.add(id(flag))
            key = getattr(flag, _GROUP_ATTRIBUTE, "")
            out[key if key in out else ""].append(flag)
        return out

    def help(self, fv: flags.FlagValues, full: bool = False) -> str:
        """The flags by group: one line each for ``--help``; absl's full description (default,
        type, allowed values) and the ``brief=False`` groups too for ``--helpfull``."""
        width = max(60, min(shutil.get_terminal_size((100, 24)).columns, 100))
        members = self.members(fv)
        sections = [(g.title, members[g.key]) for g in self.groups if full or g.brief]
        sections.append(("Other flags", members[""]))
        lines: list[str] = []
        for title, group_flags in sections:
            if not group_flags:
                continue
            lines += ["", f"{title}:"]
            for flag in group_flags:
                lines += _full_flag_lines(flag, width) if full else _brief_flag_lines(flag, width, 30)
        if full:
            lines += ["", "Flag files:"]
            lines += _wrap("--flagfile=FILE: read flags from FILE, one per line (# comments); "
                           "flags after it on the command line win.", width, "  ", "    ")
        else:
            hidden = [f'"{g.title}"' for g in self.groups if not g.brief and members[g.key]]
            more = f", and {', '.join(hidden)}" if hidden else ""
            lines += [""] + _wrap(f"--helpfull shows every flag in full (default, type, allowed "
                                  f"values){more}. Flags can also live in a file: "
                                  "--flagfile=FILE.", width, "", "")
        return "\n".join(lines[1:] if lines and not lines[0] else lines)


def _wrap(text: str, width: int, first: str, rest: str) -> list[str]:
    return textwrap.wrap(text, width, initial_indent=first, subsequent_indent=rest,
                         break_on_hyphens=False) or [first.rstrip()]


def _brief_usage(flag) -> str:
    if flag.boolean:
        return f"--[no]{flag.name}"
    shown = flag.default not in (None, "", [], ())
    return f"--{flag.name}={flag.value if flag.value is not None else flag.default}" \
        if shown and not isinstance(flag.default, list) else f"--{flag.name}"


_MULTI_SUFFIX = re.compile(r";\s*repeat this option to specify a list of values$")


def _help_text(flag) -> str:
    """The flag's help on one line, without the note absl appends to multi flags."""
    return _MULTI_SUFFIX.sub("", " ".join(flag.help.split()))


def _summary(flag) -> str:
    """The help's first sentence (the brief help's one line); an enum's choices first."""
    text = _help_text(flag)
    choices = re.match(r"<([^>]*)>: ", text)
    if choices:
        text = text[choices.end():]
    match = re.search(r"(?<=[\w)\]][.!?])\s+(?=[A-Z])", text)
    text = text[:match.start()] if match else text
    return f"({choices.group(1)}) {text}" if choices else text


def _brief_flag_lines(flag, width: int, column: int) -> list[str]:
    usage = "  " + _brief_usage(flag)
    if len(usage) + 2 > column:  # a long name: the summary follows it on the same line
        return _wrap(_summary(flag), width, usage + "  ", " " * column)
    return _wrap(_summary(flag), width, usage.ljust(column), " " * column)


def _full_flag_lines(flag, width: int) -> list[str]:
    name = f"--[no]{flag.name}" if flag.boolean else f"--{flag.name}"
    lines = _wrap(f"{name}: {_help_text(flag)}", width, "  ", "    ")
    if flag.default is not None:
        lines += _wrap(f"(default: {flag.default_as_str})", width, "    ", "    ")
    syntax = getattr(flag.parser, "syntactic_help", "")
    if syntax:
        lines += _wrap(f"({syntax})", width, "    ", "    ")
    if _MULTI_SUFFIX.search(" ".join(flag.help.split())):
        lines += ["    (repeat the flag for more values)"]
    if getattr(flag, "short_name", None):
        lines += [f"    (short: -{flag.short_name})"]
    return lines


class CommandLineExit(Exception):
    """Stop the command with this exit status (help printed: 0; bad flags: 2)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def error(prog: str, message: object) -> None:
    """Print ``prog: error: message`` folded onto one line."""
    print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr)


@contextlib.contextmanager
def audio_warnings_as_lines(prog: str) -> Iterator[None]:
    """Print each :class:`soundretrain.audio.AudioWarning` (a file decoded, with something to
    say about it) once, as one ``prog: warning: ...`` line; other warnings as Python would.
    Also a decorator: ``@audio_warnings_as_lines(PROG)`` on a command's ``main``."""
    from soundretrain.audio import AudioWarning

    with warnings.catch_warnings():
        warnings.simplefilter("default", AudioWarning)  # once per file (the message names it)
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, AudioWarning):
                print(f"{prog}: warning: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def parse_flags(fv: flags.FlagValues, argv: Sequence[str], prog: str,
                usage: Callable[[], str], positional: bool = False,
                full_usage: Optional[Callable[[], str]] = None,
                presets: Optional[str] = None) -> list[str]:
    """Parse ``argv`` into ``fv`` (``--flagfile`` works) and return what is left.

    ``--help`` prints ``usage()``; ``--helpfull`` prints ``full_usage()`` when given.
    ``presets``: the stage whose ``--preset NAME`` flag files are read in place
    (:mod:`soundretrain.presets`; define the flag with ``define_preset_flag``). Raises
    :class:`CommandLineExit` after printing help, or one line for bad flags or, unless
    ``positional``, stray arguments.
    """
    argv = list(argv) or [prog]
    asked = [a for a in argv[1:] if a in HELP_ARGS]
    if asked:
        full = full_usage is not None and any(a in FULL_HELP_ARGS for a in asked)
        print(full_usage() if full else usage())
        raise CommandLineExit(0)
    expanded: list[str] = []
    if presets:
        from soundretrain.presets import PresetError, expand_presets

        try:
            argv, expanded = expand_presets(argv, presets)
        except PresetError as e:
            error(prog, e)
            raise CommandLineExit(2) from None
    try:
        rest = fv(argv)
    except flags.Error as e:
        # absl words a missing flag file "ERROR:: Unable to open flagfile: ..."; after
        # "prog: error:" that prefix would say it twice.
        message = re.sub(r"^\s*ERROR:*\s*", "", str(e).splitlines()[0] if str(e) else type(e).__name__)
        error(prog, f"{message} (see --help)")
        raise CommandLineExit(2) from None
    if presets:
        from soundretrain.presets import FLAG, PresetError, check_presets_expanded

        try:
            check_presets_expanded(fv[FLAG].value, expanded)
        except PresetError as e:
            error(prog, e)
            raise CommandLineExit(2) from None
    if not positional and len(rest) > 1:
        error(prog, f"unexpected argument(s): {' '.join(rest[1:])} (flags look like --name=value)")
        raise CommandLineExit(2)
    return rest


def non_finite_float_flags(fv: flags.FlagValues) -> list[str]:
    """One problem per float flag set to NaN or an infinity (absl accepts ``nan`` and
    ``inf``; no knob of this toolkit means anything with them)."""
    problems = []
    for name in fv:
        value = fv[name].value
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"--{name} must be a finite number, not {value}")
    return list(dict.fromkeys(problems))


class InterruptWatch:
    """Ctrl-C that always stops: SIGINT raises KeyboardInterrupt as usual and also sets
    :attr:`interrupted`, which long loops check (:meth:`check`).

    Python delivers a signal's KeyboardInterrupt in whatever code runs at that moment; when
    that is a finalizer (``__del__``, a weakref callback: TensorFlow and TFLite objects are
    full of them, and the garbage collector runs them at any allocation) the exception is
    only printed as "Exception ignored" and the interrupt is lost. The flag survives that.
    Works in the main thread; elsewhere (no signal handlers there) it changes nothing.
    """

    def __init__(self) -> None:
        self.interrupted = False
        self._previous = None
        self._installed = False
        self._unraisable = None

    def __enter__(self) -> "InterruptWatch":
        try:
            previous = signal.getsignal(signal.SIGINT)
            if previous is not signal.SIG_IGN:  # started with Ctrl-C ignored (nohup, &): keep it
                self._previous = signal.signal(signal.SIGINT, self._handle)
                self._installed = True
        except ValueError:  # not the main thread
            pass
        if self._installed:
            self._unraisable = sys.unraisablehook
            sys.unraisablehook = self._hide_swallowed_interrupt
        return self

    def _handle(self, signum, frame) -> None:
        self.interrupted = True
        raise KeyboardInterrupt

    def _hide_swallowed_interrupt(self, unraisable) -> None:
        # The lost KeyboardInterrupt is handled through the flag: no "Exception ignored" trace.
        if issubclass(unraisable.exc_type, KeyboardInterrupt) and self.interrupted:
            return
        self._unraisable(unraisable)

    def check(self) -> None:
        """Raise KeyboardInterrupt if Ctrl-C was pressed (even if its exception was lost)."""
        if self.interrupted:
            raise KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            if sys.unraisablehook == self._hide_swallowed_interrupt:
                sys.unraisablehook = self._unraisable


def import_tensorflow_quietly() -> None:
    """Import TensorFlow (and probe its devices) with stderr silenced: its C++ start-up lines
    (oneDNN, CUDA probing) cannot be turned off by TF_CPP_MIN_LOG_LEVEL in TF 2.21, and they
    would bury the command's own one-line messages. Python exceptions still propagate."""
    try:
        saved = os.dup(2)
    except OSError:  # no real stderr (an embedded interpreter): nothing to silence
        import tensorflow  # noqa: F401
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stderr.flush()
        os.dup2(devnull, 2)
        import tensorflow as tf
        tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
