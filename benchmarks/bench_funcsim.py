"""Functional-simulator speed and bit-exactness on a real model (docs/benchmarks.md).

    .venv/bin/python benchmarks/bench_funcsim.py [--model smollm2] [--preset w4a8-int4] [--tokens 32]

Compiles the model, prefills a short prompt and decodes greedily on the simulator and on golden's
QLlama; prints tokens/s of the simulator, whether tokens and int32 logits are identical, and the
simulator's counts (instructions per unit, HBM bytes per step).
"""

from __future__ import annotations

import argparse
import time

from olivine.sim.runtime import check_against_golden


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--preset", default="w4a8-int4")
    ap.add_argument("--prompt", default="The capital of France is")
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()
    t0 = time.perf_counter()
    rep = check_against_golden(args.model, args.preset, prompt=args.prompt, max_new_tokens=args.tokens)
    st = rep["stats"]
    n = len(rep["tokens"])
    print(f"{args.model} {args.preset}: {n} tokens, simulator {rep['sim_tokens_per_s']:.2f} tokens/s "
          f"(prefill included), compile {rep['compile_seconds']:.1f} s, total {time.perf_counter() - t0:.1f} s")
    print(f"tokens equal: {rep['tokens_equal']}, logits equal: {rep['logits_equal']} "
          f"(max diff {rep['max_logit_diff']} LSB)")
    print(f"text: {args.prompt!r} -> {rep['text']!r}")
    print(f"instructions per unit: {st.instructions}; by mnemonic: {st.by_mnemonic}")
    print(f"HBM read {sum(st.hbm_read.values()) / 1e6:.1f} MB over {len(st.hbm_read)} channels, "
          f"written {sum(st.hbm_written.values()) / 1e3:.1f} kB")


if __name__ == "__main__":
    main()
