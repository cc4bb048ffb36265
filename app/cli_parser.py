"""The parser of every moshi-mlx tool: one vocabulary (`--version`, defaults in `--help`, one-line usage
errors) and the exit codes.

It imports nothing from our package at import time: the benchmarks' workers also parse their arguments
inside Kyutai's environment, where `moshi_mlx` is Kyutai's package.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

# Exit codes, the same in every tool (README "Exit codes").
EXIT_OK = 0
EXIT_FAILURE = 1  # the run failed after it started (the model step, a session error)
EXIT_USAGE = 2  # a bad flag, file or model, refused before any work
EXIT_DEVICE = 3  # no usable sound device
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM, the shell's convention


class _Version(argparse.Action):
    """`--version`: `prog moshi_mlx X.Y.Z`; the package is imported only when asked (see the module doc)."""

    def __call__(self, parser, namespace, values, option_string=None) -> NoReturn:
        from moshi_mlx import __version__

        print(f"{parser.prog} moshi_mlx {__version__}")
        raise SystemExit(EXIT_OK)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout and appends `(default: X)` to every flag whose help does not say it.

    Flags without a default (None, store_true's False) say nothing: their help tells what absence means.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or "default" in text
                or action.default is None or action.default is False or action.default is argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


class CliParser(argparse.ArgumentParser):
    """The parser of every moshi-mlx tool: `--version`, defaults in `--help`, usage errors in one line.

    A usage error prints `prog: error: <what> (see --help)` and exits 2, without argparse's usage block.
    """

    def __init__(self, prog: str, description: str | None = None, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(prog=prog, description=description, **kwargs)
        self.add_argument("--version", action=_Version, nargs=0, help="print the version and exit")

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {' '.join(message.split())} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)

    def add_alias(self, alias: str, dest: str, **kwargs) -> None:
        """An old or other spelling of a flag, parsed into `dest` and left out of `--help`."""
        self.add_argument(alias, dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)


def make_parser(prog: str, description: str | None = None, **kwargs) -> CliParser:
    """The parser every tool starts from (see `CliParser`); `kwargs` go to argparse (e.g. `epilog`)."""
    return CliParser(prog, description, **kwargs)
