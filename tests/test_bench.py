"""The benchmarks' own instruments: the graph-operation counter and a short run of each worker on ours."""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from app.bench_lm import _count_graph_ops
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
