"""Norm tweaking variants on a cached -nt model's GPTQ linears (issue 10 section 1 experiment).

Loads SmolLM2 and the quantized model of ``--preset`` (through golden.qcache), puts the folded,
untweaked gains back (golden.gptq.fold_norm_scales of the loaded weights with the entry's
norm_scales), reruns golden.normtweak.tweak_norm_gains with ``--steps`` / ``--tokens`` / ``--lr``
and ``--target`` ("layer": normtweak's own target, the float layer on the integer model's input;
"model": the float model's own output of that layer, patched in here) / ``--steps`` /
``--tokens`` / ``--lr`` and prints the integer model's perplexity on the first 1,024 tokens of
each corpus.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_normtweak_target.py --target model --steps 10
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from olivine.golden import gptq, normtweak, qcache  # noqa: E402
from olivine.golden.accuracy import perplexity  # noqa: E402
from olivine.golden.data import calibration_tokens, corpus_tokens  # noqa: E402
from olivine.golden.loaders import load_model  # noqa: E402
from olivine.golden.qconfig import QuantConfig  # noqa: E402
from olivine.golden.qmodel import QLlama  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="w4a8-ovp-gptq-g128-cal4k-nsmooth-nt")
    ap.add_argument("--target", default="model", choices=("layer", "model"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--n-tokens", type=int, default=1024)
    a = ap.parse_args()
    t0 = time.time()
    m = load_model("smollm2")
    cfg = QuantConfig.preset(a.preset)
    # the calibration tokens of bench_accuracy.py / golden.accuracy (same cache entry)
    calib = calibration_tokens(m.tokenizer, cfg.calibration_length(1024), max_seq_len=m.config.max_seq_len,
                               n_eval=a.n_tokens)
    key = qcache.cache_key(m, cfg, calib)
    if not any(qcache.cache_root().glob(f"qmodels/*-{key}.qmodel")):
        raise SystemExit(f"no cache entry for {a.preset} with key {key}; run bench_accuracy.py on it first")
    q = qcache.quantize_cached(m, cfg, calib)
    weights = gptq.fold_norm_scales(m.weights, q.norm_scales)  # untweaked, folded gains
    base = QLlama(m.config, weights, cfg, q.linears, q.embed_q, q.layer_quant, norm_scales=q.norm_scales,
                  col_scales=q.col_scales, row_scales=q.row_scales)
    toks = normtweak.norm_tweak_tokens(calib[..., : cfg.gptq_tokens], a.tokens, m.config.max_seq_len)
    t1 = time.time()
    if a.target == "model":
        # the float model's own output of each layer as the target (normtweak's target() is
        # called once per layer, in order): its float residual stream runs alongside
        state = {"x": None}

        def model_target(self, x):
            import torch

            with torch.no_grad():
                fm = self.float_model
                if state["x"] is None:
                    state["x"] = fm.embed(toks)
                state["x"] = fm.ffn_block(self.layer, fm.attn_block(self.layer, state["x"], None, 0))
            return state["x"]

        normtweak._Standin.target = model_target
    gains, report = normtweak.tweak_norm_gains(base, toks, steps=a.steps, lr=a.lr, show_progress=True)
    t2 = time.time()
    model = QLlama(m.config, normtweak.apply_gains(weights, gains), cfg, q.linears, q.embed_q, q.layer_quant)
    kept = sum(r.kept for r in report)
    print(f"target={a.target} steps={a.steps} tokens={a.tokens} lr={a.lr:g}: {kept}/{len(report)} layers kept, "
          f"tweak {t2 - t1:.0f} s")
    for corpus in ("lee", "shakespeare"):
        ev = corpus_tokens(corpus, m.tokenizer, a.n_tokens)
        print(f"ppl {corpus}: {perplexity(model, ev):.2f}", flush=True)
    print(f"wall {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
