"""moshi-mlx-bench: speed and memory, ours side by side with Kyutai's moshi_mlx, in one run.

    moshi-mlx-bench lm   [--configs tiny,mid | --model DIR] [--precisions bf16,q8,q4] ...  (app/bench_lm.py)
    moshi-mlx-bench mimi [--reference-python PY] [--minutes N] [--only ROW ...] ...   (app/bench_mimi.py)
    moshi-mlx-bench offline [--model DIR] [--seconds N]                     (app/bench_offline.py)
    moshi-mlx-bench engine [--model DIR] [--frames N] [--realtime]          (app/bench_engine.py)
    moshi-mlx-bench stt [--model DIR | --size 1b|mid] [--seconds N]        (app/bench_stt.py)
    moshi-mlx-bench tts [--model DIR | --size 1.6b|mid] [--text SCRIPT]    (app/bench_tts.py)

Every one takes `--blas bundled|openblas` (Linux: the BLAS of every worker, both sides alike; app/blas.py).

Kyutai's implementation runs in its own environment (`bash tests/reference/build_envs.sh` builds it in
.ref/); numbers are printed, never asserted.
"""

from __future__ import annotations

import sys

from .cli_parser import EXIT_OK, EXIT_USAGE


COMMANDS = ("lm", "mimi", "offline", "engine", "stt", "tts")
PROG = "moshi-mlx-bench"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Each benchmark parses its own flags (`moshi-mlx-bench lm --help`); this level only dispatches.
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__.strip())
        print(f"\n`{PROG} COMMAND --help` lists each benchmark's flags; `{PROG} --version` prints the version.")
        return EXIT_OK
    if argv[:1] == ["--version"]:
        from moshi_mlx import __version__

        print(f"{PROG} moshi_mlx {__version__}")
        return EXIT_OK
    if not argv or argv[0] not in COMMANDS:
        what = f"unknown benchmark {argv[0]!r}" if argv else "which benchmark?"
        print(f"{PROG}: error: {what}: choose one of {', '.join(COMMANDS)} (see --help)", file=sys.stderr)
        return EXIT_USAGE
    what, rest = argv[0], argv[1:]
    if what == "lm":
        from .bench_lm import main as run
    elif what == "mimi":
        from .bench_mimi import main as run
    elif what == "engine":
        from .bench_engine import main as run
    elif what == "stt":
        from .bench_stt import main as run
    elif what == "tts":
        from .bench_tts import main as run
    else:
        from .bench_offline import main as run
    return run(rest)


if __name__ == "__main__":
    sys.exit(main())
