"""No session limit: 5000 steps with a 3000-step context run at flat memory (the KV ring never grows)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import mlx.core as mx, numpy as np
    from moshi_mlx.lm import Generator, LmConfig
    from moshi_mlx.lm.model import Lm

    def peak_mb():
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024

    cfg = LmConfig.from_dict(dict(dim=64, num_heads=2, num_layers=1, text_card=64, card=64, context=3000,
                                  depformer_dim=32, depformer_num_heads=2, depformer_num_layers=1,
                                  depformer_dim_feedforward=96))
    mx.random.seed(0)
    lm = Lm(cfg)
    gen = Generator(lm, text_temp=0, audio_temp=0, seed=0)
    rng = np.random.default_rng(0)
    user = rng.integers(0, cfg.card, size=(5000, 1, cfg.user_q)).astype(np.int32)
    out = {}
    for t in range(5000):
        gen.step(user[t])
        if t + 1 in (1000, 3000, 5000):
            out[t + 1] = {"peak_mb": peak_mb(), "cache": [list(c.keys.shape) for c in gen.cache]}
    print(json.dumps(out))
""")


def test_5000_steps_with_context_3000_run_at_flat_memory():
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"\npeak RSS: {m['1000']['peak_mb']:.1f} MB at 1000 steps, {m['3000']['peak_mb']:.1f} MB at 3000, "
          f"{m['5000']['peak_mb']:.1f} MB at 5000")
    # the ring is allocated once, at its full context: same shapes at every point
    assert m["1000"]["cache"] == m["5000"]["cache"] and m["1000"]["cache"][0][2] == 3000
    # past the window nothing grows (allow allocator noise)
    assert m["5000"]["peak_mb"] - m["3000"]["peak_mb"] < 8
    assert m["5000"]["peak_mb"] - m["1000"]["peak_mb"] < 24
