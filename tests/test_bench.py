"""The benchmarks' own instruments: the graph-operation counter, the BLAS choice, the weight bytes per LM step, and
a short run of the workers on ours."""

from __future__ import annotations

import json
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest

from app import blas
from app.bench_engine import worker as engine_worker
from app.bench_lm import REPO, _count_graph_ops, weight_bytes_per_step
from app.bench_mimi import worker as mimi_worker
from conftest import FIXTURES
from moshi_mlx.constants import MIMI_FILE


def test_graph_op_counter_counts_each_evaluated_primitive_once():
    x = mx.array(np.arange(4, dtype=np.float32))
    mx.eval(x)

    def plain(_):
        return np.array((x + x) * x)  # add, multiply (scalar operands would add Broadcast nodes)

    def queued_ahead(_):
        y = mx.exp(x) - x  # exp, subtract
        mx.async_eval(y)  # started early: must still be counted once, at the read
        return y.tolist()

    assert _count_graph_ops(plain, steps=3) == 2
    assert _count_graph_ops(queued_ahead) == 2
    # Restored afterwards: async_eval evaluates again, and reads are plain again.
    y = x * 3
    mx.async_eval(y)
    assert np.array(y).tolist() == [0, 3, 6, 9]


def test_mimi_worker_reports_time_memory_and_ops():
    r = mimi_worker("ours", str(FIXTURES / "mimi_tiny" / MIMI_FILE), 8, frames=8, seed=0)
    assert r["encode_ms"][0] > 0 and r["decode_ms"][0] > 0
    assert r["rss_end_mb"] >= r["rss_warm_mb"] > 0
    assert r["graph_ops"] > 50


def test_lm_bench_counts_the_weights_a_step_reads_without_embedding_tables():
    file = FIXTURES / "lm_tiny" / "model.safetensors"
    weights = mx.load(str(file))
    tables = {"text_emb", "audio_embs", "emb"}
    read = sum(v.nbytes for k, v in weights.items() if not tables & set(k.split(".")))
    assert any(tables & set(k.split(".")) for k in weights)
    assert weight_bytes_per_step(file) == read


def test_blas_bundled_takes_an_inherited_openblas_out_of_the_preload(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x/openblas-pthread/libopenblas.so.0 /opt/libother.so")
    env, header = blas.setup("bundled")
    assert env["LD_PRELOAD"] == "/opt/libother.so" and header == "BLAS: bundled netlib (the mlx wheel's own)"


def test_blas_check_refuses_a_worker_that_ran_on_another_blas(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(blas, "openblas_library", lambda: "/usr/lib/x/openblas-pthread/libopenblas.so.0")
    numpy_own = "/venv/numpy.libs/libscipy_openblas64_-32a4b2a6.so"  # renamed symbols: MLX cannot use it
    bundled = {"libs": ["/venv/mlx_cpu.libs/libblas-bd8a282c.so.3.10.0", numpy_own], "gflops": 3.0}
    assert blas.describe("bundled", bundled) == "libblas-bd8a282c.so.3.10.0, 3 GFLOP/s"
    with pytest.raises(SystemExit, match="did not take effect"):
        blas.describe("openblas", bundled)


def test_blas_openblas_missing_is_one_line_naming_the_apt_command(monkeypatch, capsys):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(blas, "OPENBLAS_GLOB", "/nonexistent/openblas-pthread/libopenblas.so.0")
    with pytest.raises(SystemExit) as exit_:
        blas.setup("openblas")
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert "apt-get install libopenblas0-pthread" in err


def test_blas_preloads_nothing_on_macos(monkeypatch, capsys):
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    env, header = blas.setup("openblas")
    assert "LD_PRELOAD" not in env and header == "BLAS: Accelerate (macOS)"
    assert "no effect on macOS" in capsys.readouterr().err


@pytest.mark.skipif(not sys.platform.startswith("linux") or blas.openblas_library() is None,
                    reason=f"OpenBLAS not installed ({blas.INSTALL_HINT})")
@pytest.mark.parametrize("choice", blas.CHOICES)
def test_blas_choice_takes_effect_in_a_worker(choice):
    env, _ = blas.setup(choice)
    code = "import json, numpy; from app import blas; print(json.dumps(blas.probe()))"  # numpy maps its own
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True)
    described = blas.describe(choice, json.loads(out.stdout))  # raises when another BLAS ran
    assert ("openblas" in described) == (choice == "openblas")


def test_engine_bench_compares_serial_and_stream_loops(tiny_checkpoint):
    r = engine_worker(tiny_checkpoint, frames=6, realtime=False, codec_devices=["cpu"])
    (row,) = r["rows"]
    assert row["tokens_identical"] and row["audio_identical"]
    for loop in ("serial", "stream"):
        assert row[loop]["fps"] > 0 and row[loop]["latency_p90_ms"] >= row[loop]["latency_med_ms"] > 0
