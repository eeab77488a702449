"""Integer-model check of the RMSNorm-folded input smoothing (bench_accuracy_levers ``nscale=``):
attn_norm's gamma_j / s_j with wq/wk/wv's column j x s_j, ffn_norm's gamma_j / s_j with w_gate/w_up's
column j x s_j (s = golden.gptq.smoothing_scales of that input's calibration Hessian, alpha
``--alpha``), exact in float; the folded float weights then go through an unchanged preset of
golden.qmodel.quantize_model (its own GPTQ Hessians see the scaled inputs). Hessians come from
bench_accuracy_levers' cache (build/levers-hessians-<model>-<calib>.pt) or are collected.

    .venv/bin/python benchmarks/bench_norm_smoothing.py --preset w4a8-ovp-gptq-g128-cal4k-smooth
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from olivine.golden import gptq  # noqa: E402
from olivine.golden.accuracy import perplexity  # noqa: E402
from olivine.golden.data import CALIBRATION_TOKENS, corpus_tokens, model_calibration_tokens  # noqa: E402
from olivine.golden.loaders import load_model  # noqa: E402
from olivine.golden.qconfig import QuantConfig  # noqa: E402
from olivine.golden.qmodel import quantize_model  # noqa: E402


def fold_norm_smoothing(weights, hs: dict, alpha: float):
    """LlamaWeights with each layer's norms divided by s and the linears they feed scaled by s."""
    layers = []
    for i, lw in enumerate(weights.layers):
        sa = gptq.smoothing_scales(hs[f"layers.{i}.wq"], alpha)
        sf = gptq.smoothing_scales(hs[f"layers.{i}.w_gate"], alpha)
        layers.append(dataclasses.replace(
            lw, attn_norm=lw.attn_norm / sa, wq=lw.wq * sa, wk=lw.wk * sa, wv=lw.wv * sa,
            ffn_norm=lw.ffn_norm / sf, w_gate=lw.w_gate * sf, w_up=lw.w_up * sf))
    return dataclasses.replace(weights, layers=layers)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--preset", default="w4a8-ovp-gptq-g128-cal4k-smooth")
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--calib", type=int, default=4096, help="tokens per corpus of the smoothing statistics")
    ap.add_argument("--n-tokens", type=int, default=1024)
    ap.add_argument("--corpora", nargs="+", default=["lee", "shakespeare"])
    ap.add_argument("--cache-dir", default="build")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    loaded = load_model(args.model)
    cfg = loaded.config
    path = os.path.join(args.cache_dir, f"levers-hessians-{cfg.name}-{args.calib}.pt")
    names = [f"layers.{i}.{n}" for i in range(cfg.n_layers) for n in ("wq", "w_gate")]
    if os.path.exists(path):
        hs = torch.load(path)
    else:
        hs = gptq.collect_hessians(cfg, loaded.weights, model_calibration_tokens(loaded, n_tokens=args.calib), names)
    folded = fold_norm_smoothing(loaded.weights, hs, args.alpha)
    qcfg = QuantConfig.preset(args.preset)
    calib = model_calibration_tokens(loaded, n_tokens=qcfg.calibration_length(CALIBRATION_TOKENS))
    t0 = time.perf_counter()
    q = quantize_model(cfg, folded, qcfg, calib, show_progress=False)
    print(f"{args.preset} + norm smoothing alpha {args.alpha}: quantized in {time.perf_counter() - t0:.0f} s", flush=True)
    for c in args.corpora:
        ids = corpus_tokens(c, loaded.tokenizer, args.n_tokens)
        print(f"{c}: ppl {perplexity(q, ids):.3f} (load {os.getloadavg()[0]:.1f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
