"""OVP quantization speed: 4096x4096 weights (full 88-candidate search) and a 16x4096 activation.

Usage: .venv/bin/python benchmarks/bench_ovp.py [--size 4096] [--threads N] [--repeat 1]
Prints wall-clock and process CPU seconds per case. The CPU figure is the honest one on a
shared machine (wall time then includes waiting for a core).
"""

from __future__ import annotations

import argparse
import time

import torch

from olivine.golden import ovp


def _time(fn, repeat: int) -> tuple[float, float, object]:
    best_wall, best_cpu, out = float("inf"), float("inf"), None
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        best_wall = min(best_wall, time.perf_counter() - w0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best_wall, best_cpu, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096, help="weight is size x size (default 4096)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per case; the best is reported")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    n = args.size
    weight = torch.randn(n, n, generator=g) * 0.02
    spikes = torch.rand(n, n, generator=g) < 0.002  # a few outliers, as in LLM weights
    weight = torch.where(spikes, weight * 20, weight)
    act = torch.randn(16, n, generator=g)
    act[:, :: max(1, n // 8)] *= 30  # outlier channels, as in LLM activations
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    cases = [
        (f"weight {n}x{n} row, normal=auto", lambda: ovp.quantize(weight, normal="auto")),
        (f"weight {n}x{n} row, normal=int4", lambda: ovp.quantize(weight, normal="int4")),
        (f"weight {n}x{n} row, normal=flint4", lambda: ovp.quantize(weight, normal="flint4")),
        (f"weight {n}x{n} row, bits=8 int8", lambda: ovp.quantize(weight, bits=8, normal="int8")),
        (f"activation 16x{n} tensor, normal=auto", lambda: ovp.quantize(act, normal="auto", granularity="tensor")),
    ]
    for name, fn in cases:
        wall, cpu, t = _time(fn, args.repeat)
        stats = ovp.pair_stats(t)
        print(
            f"{name:40s} wall {wall:7.2f} s  cpu {cpu:7.2f} s  -> {t.normal}, "
            f"outlier pairs {stats['outlier_victim']:.4f}, collisions {stats['outlier_outlier']:.5f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
