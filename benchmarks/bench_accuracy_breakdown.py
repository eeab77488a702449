"""Where W4A8's perplexity loss comes from: weights vs activations, linear kind by linear kind.

Float fake-quant path (as benchmarks/bench_gptq.py): each decoder linear may take its 4-bit
dequantized weight (the preset's, e.g. OVP4 + GPTQ + 4-bit group multipliers per 128) and/or
per-token INT8 fake-quantized inputs (contract.fake_quant_act_dynamic_int8); lm_head W8A8 or
float. Every other step (attention, norms, SFU) is float, so the rows isolate the linears'
error. The integer model's extra loss (fixed-point SFU, attention, KV cache) is the w8a8 row of
docs/benchmarks.md minus the A8 row here.

    .venv/bin/python benchmarks/bench_accuracy_breakdown.py --n-tokens 256
    .venv/bin/python benchmarks/bench_accuracy_breakdown.py --n-tokens 1024 --rows fp32 a8 w4 w4a8

The quantized weights come from golden.gptq (Hessians of the float model on the calibration
rule's tokens, golden.data.model_calibration_tokens) and are kept in --weights-cache between runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from olivine.golden import gptq  # noqa: E402
from olivine.golden.accuracy import DEFAULT_PROMPTS, greedy_agreement, perplexity  # noqa: E402
from olivine.golden.contract import fake_quant_act_dynamic_int8, quantize_weight  # noqa: E402
from olivine.golden.data import corpus_tokens, model_calibration_tokens  # noqa: E402
from olivine.golden.loaders import load_model  # noqa: E402
from olivine.golden.model import FloatLlama  # noqa: E402

KINDS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


class MixLlama(FloatLlama):
    """FloatLlama with dequantized weights on ``wnames`` and INT8 fake-quant inputs on ``anames``."""

    def __init__(self, config, weights, deq, wnames, anames):
        super().__init__(config, weights)
        self.deq, self.wnames, self.anames = deq, set(wnames), set(anames)

    def linear(self, name, x, weight):
        if name in self.anames:
            x = fake_quant_act_dynamic_int8(x)
        if name in self.wnames:
            weight = self.deq[name]
        return torch.matmul(x, weight.t())


def rows_spec(names, n_layers):
    """row name -> (weight-quantized names, act-quantized names)."""
    dec = [n for n in names if n != "lm_head"]
    allq = list(names)
    spec = {
        "fp32": ([], []),
        "a8": ([], allq),                       # activations only (weights float)
        "w8a8-head": (["lm_head"], ["lm_head"]),
        "w4": (dec + ["lm_head"], []),          # weights only (4-bit decoder, INT8 head)
        "w4a8": (allq, allq),                   # the preset on the float path
    }
    for k in KINDS:  # one linear kind at 4 bits (weights only), the rest float
        spec[f"w4:{k}"] = ([n for n in dec if n.endswith("." + k)], [])
    for k in KINDS:  # every linear at 4 bits but this kind float (weights only)
        spec[f"w4-but:{k}"] = ([n for n in dec if not n.endswith("." + k)] + ["lm_head"], [])
    third = n_layers // 3
    for lo in range(0, n_layers, third):
        hi = min(lo + third, n_layers)
        spec[f"w4:layers{lo}-{hi - 1}"] = ([n for n in dec if lo <= int(n.split(".")[1]) < hi], [])
    for k in KINDS:
        spec[f"a8:{k}"] = ([], [n for n in dec if n.endswith("." + k)])
    return spec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--n-tokens", type=int, default=256)
    ap.add_argument("--corpora", nargs="+", default=["lee"])
    ap.add_argument("--kind", default="ovp4", choices=["ovp4", "int4"])
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--rows", nargs="+", default=None, help="rows to run (default: all)")
    ap.add_argument("--weights-cache", default=None, help="torch.save file of the dequantized weights")
    ap.add_argument("--greedy-n", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    loaded = load_model(args.model)
    cfg, tok = loaded.config, loaded.tokenizer
    names = [n for n, _ in loaded.weights.named_linears(include_lm_head=True)]
    cache = args.weights_cache or f"build/breakdown-{cfg.name}-{args.kind}-gptq-g{args.group}.pt"
    if os.path.exists(cache):
        deq = torch.load(cache)
    else:
        calib = model_calibration_tokens(loaded)
        dec = [n for n in names if n != "lm_head"]
        t1 = time.perf_counter()
        qw = gptq.quantize_linears(cfg, loaded.weights, calib, {n: args.kind for n in dec},
                                   groups={n: args.group for n in dec})
        deq = {n: q.dequantize().to(torch.float32)[:, : loaded.weights.linear(n).shape[1]] for n, q in qw.items()}
        deq["lm_head"] = quantize_weight(loaded.weights.linear("lm_head"), "int8").dequantize().to(torch.float32)
        print(f"GPTQ of {len(dec)} linears in {time.perf_counter() - t1:.0f} s", flush=True)
        os.makedirs(os.path.dirname(cache) or ".", exist_ok=True)
        torch.save(deq, cache + ".tmp")
        os.replace(cache + ".tmp", cache)
    texts = {c: corpus_tokens(c, tok, args.n_tokens) for c in args.corpora}
    prompts = [tok.encode(p) for p in DEFAULT_PROMPTS]
    ref = FloatLlama(cfg, loaded.weights)
    spec = rows_spec(names, cfg.n_layers)
    base = {}
    for row in args.rows or list(spec):
        wn, an = spec[row]
        m = MixLlama(cfg, loaded.weights, deq, wn, an)
        t1 = time.perf_counter()
        res = {c: perplexity(m, ids) for c, ids in texts.items()}
        if row == "fp32":
            base = dict(res)
        g = (sum(greedy_agreement(ref, m, p, args.greedy_n) for p in prompts) / len(prompts)) if args.greedy_n else None
        ratio = " ".join(f"{c}={v:.2f} ({v / base[c]:.3f}x, dNLL {math.log(v / base[c]):+.4f})" if base else f"{c}={v:.2f}"
                         for c, v in res.items())
        print(f"{row:22s} {ratio}" + (f" greedy={g:.3f}" if g is not None else "") +
              f" ({time.perf_counter() - t1:.0f} s)", flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps({"model": cfg.name, "row": row, "n_tokens": args.n_tokens, "kind": args.kind,
                                    "group": args.group, **{f"ppl_{c}": v for c, v in res.items()},
                                    "greedy": g}) + "\n")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
