"""One conversion, start to finish: check everything, then stream the tensors into a folder that appears whole.

Order matters for the user: every check that can fail (source found, header sane, tensors fit the config,
group size fits every layer, enough disk) runs before anything is written. The output is built in
`OUT.partial-<pid>` beside OUT and renamed into place only when complete, so a folder named OUT is never half
written; any error or Ctrl-C removes the partial folder.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx

from moshi_mlx.constants import LM_FILES, MIMI_FILE, TEXT_TOKENIZER_FILE
from moshi_mlx.lm.config import LmConfig
from moshi_mlx.mimi.weights import CONFIG_FILE as MIMI_CONFIG_FILE

from . import ConvertError
from .pytorch_to_mlx import Mapping, plan
from .quantize import (DEFAULT_GROUP_SIZE, OUTPUT_DTYPES, QUANT_BITS, Quantization, check_group_size,
                       convert_tensor, output_specs)
from .safetensors_stream import OutputSpec, SequentialWriter, TensorReader, file_size, read_header
from .source import CONFIG_FILE, SourceFiles, read_config, resolve_source

DEFAULT_PRESET = "moshi_7b"
METADATA = {"format": "mlx"}  # what mlx's own safetensors writer records
# config.json keys that name files or describe this conversion: rewritten, never carried over from the source.
_OWN_KEYS = ("moshi_name", "mimi_name", "tokenizer_name", "quantization")
GIB = 1024 ** 3


@dataclass(frozen=True)
class Options:
    """What to convert and how (the command line's arguments)."""

    src: str
    out: Path
    quantize: str | None = None
    group_size: int | None = None
    dtype: str = "bf16"
    force: bool = False
    config: Path | None = None
    revision: str | None = None


@dataclass(frozen=True)
class Result:
    """What a conversion wrote."""

    out: Path
    weights: Path
    tensors: int
    bytes_written: int
    seconds: float


def _load_config(files: SourceFiles, override: Path | None) -> tuple[LmConfig, str, dict]:
    """The architecture to validate against, how to name it in errors, and the raw dict to carry over."""
    path = override if override is not None else files.config
    if path is None:
        config = LmConfig.preset(DEFAULT_PRESET)
        return config, f"the {DEFAULT_PRESET} preset (no config.json beside the weights)", {}
    if not Path(path).is_file():
        raise ConvertError(f"{path}: no such config file; check --config")
    raw = read_config(Path(path))
    try:
        return LmConfig.from_dict(raw), f"config {path}", raw
    except (TypeError, ValueError) as e:
        raise ConvertError(f"{path}: {e}; pass a Moshi LM config.json") from None


def _output_config(config: LmConfig, raw: dict, weights_name: str, files: SourceFiles,
                   quant: Quantization | None) -> dict:
    """config.json of the output: Kyutai's schema, file names, and the quantization when there is one."""
    out = {k: v for k, v in raw.items() if k not in _OWN_KEYS}
    out.update(config.to_dict())
    # Kyutai's own MLX loader reads this key unconditionally; Moshi's temporal transformer is causal.
    out.setdefault("causal", True)
    out["moshi_name"] = weights_name
    out["mimi_name"] = files.mimi.name if files.mimi else MIMI_FILE
    out["tokenizer_name"] = files.tokenizer.name if files.tokenizer else TEXT_TOKENIZER_FILE
    if quant is not None:
        out["quantization"] = quant.to_dict()
    return out


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def human_size(n: int) -> str:
    """Bytes in the largest unit that keeps the number readable (the output spans kB to 15 GB)."""
    for unit, scale in (("GiB", GIB), ("MiB", 1024 ** 2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} bytes"


def _first_missing(folder: Path) -> Path | None:
    """The topmost not-yet-existing folder on the way to `folder` (None when `folder` exists)."""
    folder, missing = folder.absolute(), None
    while not folder.exists():
        missing, folder = folder, folder.parent
    return missing


def _check_disk(out: Path, need: int) -> None:
    where = _existing_ancestor(out.parent)
    free = shutil.disk_usage(where).free
    if need > free:
        raise ConvertError(f"not enough disk space in {where}: the output needs {human_size(need)}, "
                           f"{human_size(free)} are free; free some space or choose another --out")


def _inside(path: Path, folder: Path) -> bool:
    """True when `path` is `folder` or lies below it (symlinks resolved)."""
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _same_device(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(_existing_ancestor(b)).st_dev


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-links (no extra disk, same bytes) where the filesystem allows, else copies."""
    real = Path(os.path.realpath(src))  # hub cache entries are symlinks to blobs: link the blob itself
    try:
        os.link(real, dst)
    except OSError:
        shutil.copyfile(real, dst)


def _convert_one(reader: TensorReader, writer: SequentialWriter, mapping: Mapping, specs: list[OutputSpec],
                 dtype: mx.Dtype, quant: Quantization | None) -> None:
    """Reads, converts and writes one tensor.

    A function of its own so that every buffer dies on return: a loop variable still holding the previous
    tensor while the next one is read would double the peak memory.
    """
    outputs = convert_tensor(reader.read(mapping.source, mapping.rows), mapping, dtype, quant)
    for spec, data in zip(specs, outputs):
        writer.write(spec.name, data)


def _stream_weights(files: SourceFiles, path: Path, mappings: list[Mapping], specs: dict[str, list[OutputSpec]],
                    dtype: mx.Dtype, quant: Quantization | None) -> None:
    """Reads, converts and writes one tensor at a time."""
    ordered = [s for m in mappings for s in specs[m.target]]
    # Freed MLX buffers would otherwise be kept for reuse; returning them keeps the peak at about one tensor.
    previous_limit = mx.set_cache_limit(0)
    show = sys.stderr.isatty()
    try:
        with TensorReader(files.lm) as reader:
            writer = SequentialWriter(path, ordered, METADATA)
            try:
                for i, m in enumerate(mappings):
                    _convert_one(reader, writer, m, specs[m.target], dtype, quant)
                    if show:
                        print(f"\r  {i + 1}/{len(mappings)} tensors", end="", file=sys.stderr, flush=True)
                writer.close()
            except BaseException:
                writer.abort()
                raise
    finally:
        mx.set_cache_limit(previous_limit)
        if show:
            print(file=sys.stderr)


def _install(partial: Path, out: Path, force: bool) -> None:
    """Renames the finished folder into place (replacing OUT with --force)."""
    old = None
    if out.exists() or out.is_symlink():
        if not force:
            raise ConvertError(f"{out} appeared while converting; pass --force to replace it")
        old = out.parent / f"{out.name}.old-{os.getpid()}"
        os.rename(out, old)
    try:
        os.rename(partial, out)
    except BaseException:
        if old is not None:
            os.rename(old, out)  # the user's folder goes back where it was
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()


def run(opts: Options, log=lambda message: None) -> Result:
    """Converts `opts.src` into `opts.out`.

    Args:
        opts: What to convert and how.
        log: Called with one line per stage (the CLI prints them to stderr).

    Raises:
        ConvertError: with a one-line message; nothing is left behind in that case.
    """
    started = time.monotonic()
    out = Path(opts.out).expanduser()
    if (out.exists() or out.is_symlink()) and not opts.force:
        raise ConvertError(f"{out} already exists; pass --force to replace it, or choose another --out")
    files = resolve_source(opts.src, opts.revision)
    if out.exists() and _inside(files.folder, out):
        raise ConvertError(f"--out {out} holds the source weights (replacing it would delete them); choose "
                           "another output folder")
    config, config_name, raw = _load_config(files, opts.config)
    header = read_header(files.lm)
    layout, mappings = plan(header, config, config_name)
    quant = None
    if opts.quantize is not None:
        quant = Quantization(QUANT_BITS[opts.quantize], opts.group_size or DEFAULT_GROUP_SIZE[opts.quantize])
        check_group_size(mappings, quant)
    dtype = OUTPUT_DTYPES[opts.dtype]
    specs = {m.target: output_specs(m, dtype, quant) for m in mappings}
    weights_size = file_size([s for m in mappings for s in specs[m.target]], METADATA)
    extras = [p for p in (files.mimi, files.tokenizer) if p is not None]
    if files.mimi is not None and (files.mimi.parent / MIMI_CONFIG_FILE).is_file():
        extras.append(files.mimi.parent / MIMI_CONFIG_FILE)  # a Mimi of non-published shape needs it
    copied = sum(p.stat().st_size for p in extras if not _same_device(p, out.parent))
    _check_disk(out, weights_size + copied)

    weights_name = LM_FILES[opts.quantize or "bf16"]
    log(f"{files.lm} ({layout} layout, {len(header)} tensors, fits {config_name}) -> {out / weights_name} "
        f"({human_size(weights_size)})")
    partial = out.parent / f"{out.name}.partial-{os.getpid()}"
    created = _first_missing(out.parent)  # folders above OUT that this run creates go too on failure
    try:
        partial.mkdir(parents=True)
        _stream_weights(files, partial / weights_name, mappings, specs, dtype, quant)
        cfg = _output_config(config, raw, weights_name, files, quant)
        (partial / CONFIG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
        for p in extras:
            _link_or_copy(p, partial / p.name)
        _install(partial, out, opts.force)
    except BaseException:
        shutil.rmtree(created or partial, ignore_errors=True)
        raise
    tensors = sum(len(v) for v in specs.values())
    return Result(out, out / weights_name, tensors, weights_size, time.monotonic() - started)
