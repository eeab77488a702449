"""A model (default glassllm) end to end through the RTL core (``olivine run --backend rtl``), against isa and golden.

Per preset: compile the model (``--layers N``: its first N decoder layers) for the ``tiny`` configuration (hw/config.py), generate greedily on the
functional simulator, on the RTL core in the fast Verilator harness and on golden's QLlama, and
print whether tokens and every int32 logit agree, the cycles per prefill and decode step, the
harness' wall time and simulated cycles/s, and tokens/s at the configured clock.

    .venv/bin/python benchmarks/bench_rtl_e2e.py [--presets w4a8-ovp,w4a8-int4,w8a8,w4a8-ovp-8:16,w4a4-ovp]
        [--prompt "Once upon a time"] [--tokens 32] [--json FILE]
    .venv/bin/python benchmarks/bench_rtl_e2e.py --model smollm2 --layers 1 --presets w4a8-ovp \
        --prompt "The capital of France is" --tokens 2 --max-context 32

The first run builds the core (Verilog conversion ~1.5 min, Verilator build several minutes;
both cached in ~/.cache/olivine).
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main(argv=None) -> int:
    from olivine.sim.rtl_backend import check_rtl

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default="w4a8-ovp,w4a8-int4,w8a8,w4a8-ovp-8:16,w4a4-ovp")
    ap.add_argument("--prompt", default="Once upon a time")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--model", default="glassllm")
    ap.add_argument("--layers", type=int, default=None, help="keep only the first N decoder layers")
    ap.add_argument("--max-context", type=int, default=48)
    ap.add_argument("--json", default=None, help="also write the results as JSON")
    args = ap.parse_args(argv)
    rows, ok = [], True
    for preset in args.presets.split(","):
        t0 = time.perf_counter()
        res = check_rtl(model=args.model, preset=preset, prompt=args.prompt, max_new_tokens=args.tokens,
                        config=args.config, max_context=args.max_context, layers=args.layers)
        res["wall_seconds"] = time.perf_counter() - t0
        rows.append(res)
        c = res["cycles"]
        dec = c["decode"]
        same = res["tokens_equal_isa"] and res["logits_equal_isa"] and res["tokens_equal_golden"] and \
            res["logits_equal_golden"]
        ok &= same
        print(f"{preset:>14}: {'tokens + int32 logits identical to isa and golden' if same else 'MISMATCH'}"
              f"{'' if same else ' ' + json.dumps({k: res[k] for k in ('first_diff_isa', 'first_diff_golden')})}")
        print(f"{'':>16}{res['prompt_tokens']}-token prompt + {len(res['tokens'])} tokens; cycles: prefill "
              f"{c['prefill']:,}, decode {sum(dec) / max(len(dec), 1):,.0f} per step (min {min(dec, default=0):,}, "
              f"max {max(dec, default=0):,}), total {c['total']:,}")
        print(f"{'':>16}rtl wall {res['rtl_seconds']:.1f} s (build {res['build_seconds']:.0f} s) = "
              f"{c['simulated_cycles_per_s'] / 1e3:,.0f}k cycles/s ({c['simulated_cycles_per_cpu_s'] / 1e3:,.1f}k per "
              f"CPU-second of the harness process, load average {os.getloadavg()[0]:.1f}); isa wall {res['isa_seconds']:.1f} s; "
              f"{c['tokens_per_s_at_clock']:.1f} tok/s at {c['clock_mhz']:g} MHz "
              f"(decode {c['decode_tokens_per_s_at_clock']:.1f} tok/s)")
        u = c["units"]
        print(f"{'':>16}busy cycles: " + ", ".join(f"{k} {v['busy'] / c['total']:.0%}" for k, v in u.items())
              + "; stalled on memory: " + ", ".join(f"{k} {v['stall_memory']:,}" for k, v in u.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=str)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
