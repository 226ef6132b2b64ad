"""What the toolkit's three commands share: absl flag parsing with readable help, and
errors as one line on stderr (never a traceback).
"""
from __future__ import annotations

import os
import re
import sys
from typing import Callable, Sequence

from absl import flags

HELP_ARGS = ("-h", "--help", "-help", "--helpfull", "--helpshort")


class CommandLineExit(Exception):
    """Stop the command with this exit status (help printed: 0; bad flags: 2)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def error(prog: str, message: object) -> None:
    """Print ``prog: error: message`` folded onto one line."""
    print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr)


def parse_flags(fv: flags.FlagValues, argv: Sequence[str], prog: str,
                usage: Callable[[], str], positional: bool = False) -> list[str]:
    """Parse ``argv`` into ``fv`` (``--flagfile`` works) and return what is left.

    Raises :class:`CommandLineExit` after printing help, or one line for bad flags or, unless
    ``positional``, stray arguments.
    """
    argv = list(argv) or [prog]
    if any(a in HELP_ARGS for a in argv[1:]):
        print(usage())
        raise CommandLineExit(0)
    try:
        rest = fv(argv)
    except flags.Error as e:
        # absl words a missing flag file "ERROR:: Unable to open flagfile: ..."; after
        # "prog: error:" that prefix would say it twice.
        message = re.sub(r"^\s*ERROR:*\s*", "", str(e).splitlines()[0] if str(e) else type(e).__name__)
        error(prog, f"{message} (see --help)")
        raise CommandLineExit(2) from None
    if not positional and len(rest) > 1:
        error(prog, f"unexpected argument(s): {' '.join(rest[1:])} (flags look like --name=value)")
        raise CommandLineExit(2)
    return rest


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
