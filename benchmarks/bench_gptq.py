"""GPTQ (golden/gptq.py) vs round-to-nearest on OVP4 and INT4, and per-group scales, on a real model.

Float fake-quant path (golden/fakequant.py: dequantized weights, per-token INT8 fake-quantized
linear inputs, float attention) for every variant; ``--integer N`` also runs the named presets
on golden's integer model (golden/qmodel.py) over the first N evaluation tokens.

Evaluation: the first ``--n-tokens`` tokens of each corpus (perplexity; disjoint windows of
min(max_seq_len, N-1)), greedy agreement with fp32 (32 tokens after each of the two default
prompts). Calibration (Hessians H = X^T X of every linear's float-model input): --calib-corpora (default Lee + Shakespeare, as golden.data.calibration_tokens)
tokens [offset, offset + n_calib) with offset = --calib-offset (default 1024: disjoint from every
evaluation window of <= 1024 tokens).

    .venv/bin/python benchmarks/bench_gptq.py --n-tokens 256
    .venv/bin/python benchmarks/bench_gptq.py --n-tokens 1024 --variants fp32 ovp-rtn ovp-gptq
    .venv/bin/python benchmarks/bench_gptq.py --n-tokens 256 --variants fp32 --integer 128
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from olivine.golden import gptq, ovp  # noqa: E402
from olivine.golden.accuracy import DEFAULT_PROMPTS, greedy_agreement, perplexity  # noqa: E402
from olivine.golden.contract import quantize_weight  # noqa: E402
from olivine.golden.data import corpus_tokens  # noqa: E402
from olivine.golden.fakequant import FakeQuantLlama  # noqa: E402
from olivine.golden.loaders import load_model  # noqa: E402
from olivine.golden.model import FloatLlama  # noqa: E402
from olivine.golden.qmodel import quantize_model  # noqa: E402

#: variant -> (weight kind, None for round-to-nearest or the gptq options)
VARIANTS = {
    "fp32": (None, None),
    "ovp-rtn": ("ovp4", None),
    "ovp-gptq": ("ovp4", {}),
    "ovp-gptq-rule": ("ovp4", {"pair_choice": "rule"}),
    "ovp-gptq-refit": ("ovp4", {"scale_mode": "refit"}),
    "ovp-gptq-noorder": ("ovp4", {"act_order": False}),
    "ovp-gptq-pow2-g128": ("ovp4", {"group": 128, "group_factors": "pow2"}),
    "ovp-gptq-pow2-g64": ("ovp4", {"group": 64, "group_factors": "pow2"}),
    "ovp-gptq-mult4-g128": ("ovp4", {"group": 128, "group_factors": "mult4"}),
    "ovp-gptq-mult4-g64": ("ovp4", {"group": 64, "group_factors": "mult4"}),
    "ovp-gptq-mult8-g128": ("ovp4", {"group": 128, "group_factors": "mult8"}),
    "ovp-rtn-pow2-g128": ("ovp4", {"rtn": True, "group": 128, "group_factors": "pow2"}),
    "ovp-rtn-pow2-g64": ("ovp4", {"rtn": True, "group": 64, "group_factors": "pow2"}),
    "ovp-rtn-mult4-g128": ("ovp4", {"rtn": True, "group": 128, "group_factors": "mult4"}),
    "ovp-rtn-mult4-g64": ("ovp4", {"rtn": True, "group": 64, "group_factors": "mult4"}),
    "int4-rtn": ("int4", None),
    "int4-rtn-mult4-g128": ("int4", {"rtn": True, "group": 128, "group_factors": "mult4"}),
    "int4-gptq": ("int4", {}),
    "int4-gptq-mult4-g128": ("int4", {"group": 128, "group_factors": "mult4"}),
    # sequential GPTQ (golden.gptq.quantize_linears_sequential): Hessians of the inputs the
    # already-quantized layers produce, with INT8 fake-quantized activations
    "ovp-gptqseq-mult4-g128": ("ovp4", {"sequential": True, "group": 128}),
    "int4-gptqseq-mult4-g128": ("int4", {"sequential": True, "group": 128}),
}
DEFAULT_VARIANTS = ("fp32", "ovp-rtn", "ovp-gptq", "int4-rtn", "int4-gptq", "ovp-gptq-pow2-g128",
                    "ovp-gptq-mult4-g128", "ovp-gptq-pow2-g64", "ovp-gptq-mult4-g64")


_RTN_CACHE: dict = {}


def _rtn_ovp(name, w):
    """golden.ovp's RTN search of one linear, once per run (GPTQ variants start from it)."""
    if name not in _RTN_CACHE:
        _RTN_CACHE[name] = ovp.quantize(w, bits=4, normal="auto", granularity="row")
    return _RTN_CACHE[name]


def dequantized_weights(loaded, hs, kind, options, calib=None):
    names = [n for n, _ in loaded.weights.named_linears(include_lm_head=True)]
    out = {"lm_head": quantize_weight(loaded.weights.linear("lm_head"), "int8").dequantize()}  # W8A8 head
    if options is not None and options.get("sequential"):
        dec = [n for n in names if n != "lm_head"]
        opts = {k: v for k, v in options.items() if k not in ("sequential", "group")}
        qw = gptq.quantize_linears_sequential(loaded.config, loaded.weights, calib, {n: kind for n in dec},
                                              groups={n: options["group"] for n in dec}, **opts)
        out.update({n: q.dequantize()[:, : loaded.weights.linear(n).shape[1]] for n, q in qw.items()})
        return out
    for n in names:
        if n == "lm_head":
            continue
        w = loaded.weights.linear(n).detach().float()
        k = w.shape[1]
        if kind == "ovp4" and k % 2:  # OVP pairs need an even K: a zero column (dead in H), cropped after
            w = torch.nn.functional.pad(w, (0, 1))
        h = None if hs is None or n not in hs else hs[n]
        if h is not None and h.shape[0] != w.shape[1]:
            h = torch.nn.functional.pad(h, (0, 1, 0, 1))
        if options is None and kind == "ovp4":
            out[n] = _rtn_ovp(n, w).dequantize()  # = quantize_weight(w, "ovp4").dequantize()
        elif options is None:
            out[n] = quantize_weight(w, kind).dequantize()
        elif options.get("rtn"):  # round-to-nearest with group factors
            out[n] = gptq.rtn_grouped(w, kind, options["group"], options["group_factors"],
                                      rtn=_rtn_ovp(n, w) if kind == "ovp4" else None).dequantize()
        elif kind == "ovp4":
            out[n] = gptq.gptq_ovp(w, h, rtn=_rtn_ovp(n, w), **options).dequantize()
        else:
            out[n] = gptq.gptq_int4(w, h, **options).dequantize()
        out[n] = out[n][:, :k]
    return out


def evaluate(model, ref, texts, prompts, greedy_n):
    row = {f"ppl_{c}": perplexity(model, ids) for c, ids in texts.items()}
    row["greedy"] = 1.0 if model is ref else sum(greedy_agreement(ref, model, p, greedy_n) for p in prompts) / len(prompts)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--n-tokens", type=int, nargs="+", default=[256, 1024],
                    help="evaluation lengths (each variant is quantized once and evaluated on each)")
    ap.add_argument("--corpora", nargs="+", default=["lee", "shakespeare"])
    ap.add_argument("--n-calib", type=int, default=1024)
    ap.add_argument("--calib-offset", type=int, default=1024)
    ap.add_argument("--calib-corpora", nargs="+", default=["lee", "shakespeare"],
                    help="calibration text: n_calib tokens from each of these corpora, same offset")
    ap.add_argument("--damp", type=float, default=gptq.DAMP, help="GPTQ relative damping")
    ap.add_argument("--greedy-n", type=int, default=32)
    ap.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--integer", type=int, default=0, help="also run --presets on the integer model over N tokens")
    ap.add_argument("--presets", nargs="+", default=["w4a8-ovp", "w4a8-ovp-gptq"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="append one JSON line per result to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    loaded = load_model(args.model)
    cfg, tok = loaded.config, loaded.tokenizer
    texts = {f"{c}@{n}": corpus_tokens(c, tok, n) for n in args.n_tokens for c in args.corpora}
    calib = torch.stack([corpus_tokens(c, tok, args.n_calib, offset_tokens=args.calib_offset)
                         for c in args.calib_corpora])
    prompts = [tok.encode(p) for p in DEFAULT_PROMPTS]
    ref = FloatLlama(cfg, loaded.weights)
    print(f"{cfg.name}: N={args.n_tokens} eval tokens per corpus ({', '.join(args.corpora)}), calibration "
          f"{'+'.join(args.calib_corpora)} tokens [{args.calib_offset}, {args.calib_offset + args.n_calib}), loaded in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    hs = None
    if any(VARIANTS[v][1] is not None and not VARIANTS[v][1].get("rtn") and not VARIANTS[v][1].get("sequential")
           for v in args.variants):
        t1 = time.perf_counter()
        names = [n for n, _ in loaded.weights.named_linears(include_lm_head=False)]
        hs = gptq.collect_hessians(cfg, loaded.weights, calib, names)
        print(f"Hessians of {len(hs)} linears in {time.perf_counter() - t1:.0f} s", flush=True)

    def report(name, row, seconds):
        ppl = " ".join(f"{k}={v:.3f}" for k, v in row.items() if k.startswith("ppl_"))
        print(f"{name:24s} {ppl} greedy={row['greedy']:.3f} ({seconds:.0f} s)", flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps({"model": cfg.name, "variant": name, "calib": args.calib_corpora,
                                    "n_calib": args.n_calib, "damp": args.damp, **row}) + "\n")

    for v in args.variants:
        t1 = time.perf_counter()
        kind, options = VARIANTS[v]
        if options is not None and not options.get("rtn"):
            options = {"damp": args.damp, **options}
        model = ref if kind is None else FakeQuantLlama(cfg, loaded.weights, dequantized_weights(loaded, hs, kind, options, calib))
        report(v, evaluate(model, ref, texts, prompts, args.greedy_n), time.perf_counter() - t1)
    if args.integer:
        short = {f"{c}@{args.integer}": corpus_tokens(c, tok, args.integer) for c in args.corpora}
        for p in args.presets:
            t1 = time.perf_counter()
            q = quantize_model(cfg, loaded.weights, p, calib)
            report(f"int:{p}@{args.integer}", evaluate(q, ref, short, prompts, args.greedy_n), time.perf_counter() - t1)
            # the same integer weights on the float fake-quant path, same window
            deq = {n: lin.weight.dequantize() for n, lin in q.linears.items()}
            fq = FakeQuantLlama(cfg, loaded.weights, deq)
            report(f"fq:{p}@{args.integer}", evaluate(fq, ref, short, prompts, args.greedy_n), 0)
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
