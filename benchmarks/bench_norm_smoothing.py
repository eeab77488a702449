"""Integer-model check of the RMSNorm-folded input smoothing (bench_accuracy_levers ``nscale=``):
attn_norm's gamma_j / s_j with wq/wk/wv's column j x s_j, ffn_norm's gamma_j / s_j with w_gate/w_up's
column j x s_j (s = golden.gptq.smoothing_scales of that input's calibration Hessian, alpha
``--alpha``), exact in float; the folded float weights then go through an unchanged preset of
golden.qmodel.quantize_model (its own GPTQ Hessians see the scaled inputs). Hessians come from
bench_accuracy_levers' cache (build/levers-hessians-<model>-<calib>.pt) or are collected. The fold
is golden.gptq.fold_norm_scales, what QuantConfig.smooth_norm (preset
w4a8-ovp-gptq-g128-cal4k-nsmooth) does inside quantize_model; this script keeps other alphas and
presets open.

    .venv/bin/python benchmarks/bench_norm_smoothing.py --preset w4a8-ovp-gptq-g128-cal4k-smooth
"""

from __future__ import annotations

import argparse
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
    folded = gptq.fold_norm_scales(loaded.weights, gptq.norm_smoothing_scales(hs, args.alpha, range(cfg.n_layers)))
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
