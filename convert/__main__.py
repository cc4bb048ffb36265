"""moshi-mlx-convert: a Moshi LM checkpoint (PyTorch or MLX bf16 layout) to Kyutai's MLX layout.

    moshi-mlx-convert SRC --out DIR [--quantize q4|q8] [--group-size N] [--store-dtype bf16|fp32] [--force]

Writes DIR/model.safetensors (or model.q8/q4.safetensors) that both this package and Kyutai's moshi_mlx
load, DIR/config.json (Kyutai's schema, plus `quantization` when quantized), and the Mimi and text tokenizer
files of the source (hard-linked where possible). Tensors are streamed one at a time.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import NoReturn

# The tools' shared CLI pieces live in the sibling package: `app` beside `convert` in the checkout (tests,
# `python -m convert`), `moshi_mlx.app` beside `moshi_mlx.convert` once installed (pyproject.toml maps them).
if __package__ == "convert":
    from app.cli_common import EXIT_INTERRUPTED, fail, make_parser
else:
    from ..app.cli_common import EXIT_INTERRUPTED, fail, make_parser

from . import ConvertError
from .pipeline import Options, human_size, run
from .quantize import DEFAULT_GROUP_SIZE, OUTPUT_DTYPES, QUANT_BITS, SUPPORTED_GROUP_SIZES

EXAMPLES = """examples:
  moshi-mlx-convert kyutai/moshiko-pytorch-bf16 --out moshiko-q4 --quantize q4
  moshi-mlx-convert ./moshiko-bf16 --out moshiko-q8 --quantize q8 --group-size 32
  moshi-mlx-chat --model moshiko-q4
"""


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("moshi-mlx-convert", __doc__.split("\n\n")[0], epilog=EXAMPLES)
    p.add_argument("src", metavar="SRC", nargs="?",
                   help="hub repo id (e.g. kyutai/moshiko-pytorch-bf16), a local folder or a .safetensors file")
    p.add_argument("--model", metavar="SRC", dest="model",
                   help="the same as SRC, in the other tools' spelling (give one of the two)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR",
                   help="DIR: a new folder for the converted checkpoint (refused if it exists, unless --force)")
    p.add_argument("--quantize", choices=sorted(QUANT_BITS),
                   help="quantize every Linear and Embedding (as Kyutai's published q4/q8 files) (default: none)")
    p.add_argument("--group-size", type=int, metavar="N",
                   help=f"quantization group size (default: {DEFAULT_GROUP_SIZE['q4']} for q4, "
                        f"{DEFAULT_GROUP_SIZE['q8']} for q8)")
    p.add_argument("--store-dtype", choices=sorted(OUTPUT_DTYPES), default="bf16", dest="store_dtype",
                   help="float dtype stored in the written weights and quantization scales (the other tools' "
                   "--dtype is a compute dtype)")
    p.add_alias("--dtype", dest="store_dtype", choices=sorted(OUTPUT_DTYPES))  # the spelling before 0.1.0
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="LM config.json (Kyutai's schema); default: the one beside the weights, else the "
                        "Moshi 7B preset")
    p.add_argument("--revision", help="hub branch, tag or commit (default: the main branch)")
    p.add_argument("--force", action="store_true", help="replace DIR if it exists")
    return p


def _one_line(text: object) -> str:
    """Messages quoting other libraries' exceptions may span lines; an error here is always one."""
    return " ".join(str(text).split())


def _interrupt(signum, frame) -> NoReturn:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Console entry point (`moshi-mlx-convert`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.src is None) == (args.model is None):
        parser.error("give the source as SRC or as --model, once" if args.src else "the source SRC is missing")
    src = args.src or args.model
    if args.group_size is not None:
        if args.quantize is None:
            fail("--group-size needs --quantize q4 or q8")
        if args.group_size not in SUPPORTED_GROUP_SIZES:
            fail(f"--group-size {args.group_size} is not supported by MLX; use one of "
                 f"{', '.join(str(g) for g in SUPPORTED_GROUP_SIZES)}")
    # A kill (SIGTERM) cleans up like Ctrl-C: the partial output folder is removed on the way out.
    signal.signal(signal.SIGTERM, _interrupt)

    opts = Options(src, args.out, args.quantize, args.group_size, args.store_dtype, args.force, args.config,
                   args.revision)
    try:
        result = run(opts, log=lambda line: print(line, file=sys.stderr))
    except ConvertError as e:
        fail(_one_line(e))
    except KeyboardInterrupt:
        fail("interrupted; the partial output was removed", EXIT_INTERRUPTED)
    except OSError as e:  # disk full, permissions, a file vanishing under us
        fail(_one_line(f"{e.strerror or e} ({e.filename or opts.out}); nothing was written to {opts.out}"))
    except Exception as e:  # a bug, not a user error: still one line, and the partial output is gone
        fail(_one_line(f"internal error ({type(e).__name__}: {e}); nothing was written to {opts.out}; "
                       "please report it"))
    print(f"wrote {result.out} ({result.weights.name}: {result.tensors} tensors, "
          f"{human_size(result.bytes_written)}) in {result.seconds:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
