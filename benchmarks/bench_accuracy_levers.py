"""W4A8 levers one by one on the float fake-quant path (issue 10 section 1): GPTQ calibration size,
damping and ordering, GPTQ or round-to-nearest per linear kind, w_down input scaling, INT8 for
the most sensitive linears.

Every variant quantizes SmolLM2's decoder linears to OVP4 (or INT4) with 4-bit group multipliers
per 128 weights (the contract's form, golden/gptq.py) and runs golden.fakequant.FakeQuantLlama
(per-token INT8 inputs, lm_head W8A8, attention / norms / SFU float) on the first N tokens of
each corpus. Hessians come from the calibration rule's text (golden.data: tokens from
calibration_offset on, never the evaluated ones), ``--calib`` tokens per corpus, accumulated in
windows (golden.gptq.CALIBRATION_WINDOW), and are kept in build/ between runs.

Variant syntax, comma-separated key=value (defaults in brackets):
  calib=N [1024]  damp=F [0.01]  order=act|none [act]  kind=ovp4|int4 [ovp4]
  rtn=KINDS [-] (linear kinds rounded to nearest, "+"-separated, e.g. rtn=w_down+w_up)
  scale=ALPHA [0] (w_down input scaling s = rms(x)**ALPHA folded into w_up's rows)
  nscale=ALPHA [0] (the same for the q/k/v and gate/up inputs, 1/s folded into the RMSNorm gammas)
  oscale=ALPHA [0] (the same for wo's input, 1/s folded into wv's rows; s tied over the query heads
                    that share one key-value head, exact in float)
  group=64|128 [128] (4-bit multipliers per that many weights)
  int8=NAMES [-] ("+"-separated globs kept at INT8, e.g. int8=layers.2?.w_down)

    .venv/bin/python benchmarks/bench_accuracy_levers.py --variants calib=1024,rtn=w_down calib=4096,rtn=w_down
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from olivine.golden import gptq  # noqa: E402
from olivine.golden.accuracy import DEFAULT_PROMPTS, greedy_agreement, perplexity  # noqa: E402
from olivine.golden.contract import quantize_weight  # noqa: E402
from olivine.golden.data import calibration_tokens, calibration_offset, corpus_tokens  # noqa: E402
from olivine.golden.fakequant import FakeQuantLlama  # noqa: E402
from olivine.golden.loaders import load_model  # noqa: E402
from olivine.golden.mixed import storage_bytes  # noqa: E402
from olivine.golden.model import FloatLlama  # noqa: E402
from olivine.golden.qconfig import LayerQuant  # noqa: E402

#: the linear whose input H stands for the others (they share one input)
_SHARED = {"wk": "wq", "wv": "wq", "w_up": "w_gate"}


def parse_variant(text: str) -> dict:
    v = {"calib": 1024, "damp": gptq.DAMP, "order": "act", "kind": "ovp4", "rtn": (), "scale": 0.0, "int8": (), "nscale": 0.0,
         "group": 128, "oscale": 0.0}
    for part in filter(None, text.split(",")):
        key, _, val = part.partition("=")
        if key not in v:
            raise SystemExit(f"unknown variant key {key!r} in {text!r}; keys: {', '.join(v)}")
        if key in ("rtn", "int8"):
            v[key] = tuple(val.split("+"))
        elif key in ("calib", "group"):
            v[key] = int(val)
        elif key in ("damp", "scale", "nscale", "oscale"):
            v[key] = float(val)
        else:
            v[key] = val
    return v


def hessians(loaded, n_calib: int, names, cache_dir: str):
    """name -> H (float64) of the float model on n_calib calibration tokens per corpus."""
    cfg = loaded.config
    path = os.path.join(cache_dir, f"levers-hessians-{cfg.name}-{n_calib}.pt")
    if os.path.exists(path):
        shared = torch.load(path)
    else:
        calib = calibration_tokens(loaded.tokenizer, n_calib, offset_tokens=calibration_offset(cfg.max_seq_len))
        own = [n for n in names if n.split(".")[-1] not in _SHARED]
        t0 = time.perf_counter()
        shared = gptq.collect_hessians(cfg, loaded.weights, calib, own)
        print(f"Hessians of {2 * n_calib} tokens in {time.perf_counter() - t0:.0f} s", flush=True)
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"  # two runs may write the same cache entry at once
        torch.save(shared, tmp)
        os.replace(tmp, path)
    out = {}
    for n in names:
        layer, short = n.rsplit(".", 1)
        out[n] = shared[f"{layer}.{_SHARED.get(short, short)}"]
    return out


def input_scales(v: dict, hs: dict, names, config=None) -> dict:
    """linear name -> the per-input-channel scale s of its input (the linear runs x / s with
    weight w * s; golden.gptq.smoothing_scales of the calibration Hessian): w_down's with
    v["scale"] (1/s folded into w_up's rows), q/k/v's and gate/up's with v["nscale"] (1/s folded
    into the RMSNorm gamma before them, shared by the linears of one input); empty when neither."""
    scales = {}
    for n in names:
        short = n.split(".")[-1]
        alpha = v["scale"] if short == "w_down" else v["nscale"] if short in ("wq", "wk", "wv", "w_gate", "w_up") else 0
        if alpha:
            scales[n] = gptq.smoothing_scales(hs[n], alpha)
        elif short == "wo" and v["oscale"]:
            scales[n] = gptq.head_tied_smoothing_scales(hs[n], v["oscale"], config.n_heads, config.n_kv_heads)
    return scales


def quantize_variant(loaded, v: dict, hs: dict, names):
    """name -> dequantized weight [N, K] of variant v (in the variant's own input scaling: the
    model runs x / s, see input_scales); and the stored bits per weight."""
    w_all = {n: loaded.weights.linear(n).to(torch.float32) for n in names}
    scales = input_scales(v, hs, names, loaded.config)
    deq, bits_num, bits_den = {}, 0, 0
    group = v["group"]
    for n in names:
        short = n.split(".")[-1]
        layer = n.rsplit(".", 1)[0]
        w, h = w_all[n], hs[n]
        if n in scales:
            s = scales[n]
            w = w * s
            h = h / s.double().reshape(-1, 1) / s.double().reshape(1, -1)
        row = scales.get(f"{layer}.w_down") if short == "w_up" and v["scale"] else None
        if row is not None:
            w = w / row.reshape(-1, 1)
        if any(fnmatch.fnmatchcase(n, p) for p in v["int8"]):
            q = quantize_weight(w, "int8")
            d = q.dequantize().to(torch.float32)
            wbits = 8
        elif short in v["rtn"]:
            odd = v["kind"] == "ovp4" and w.shape[1] % 2  # OVP pairs: one zero column, as compile_linear adds
            q = gptq.rtn_grouped(torch.nn.functional.pad(w, (0, 1)) if odd else w, v["kind"], group, "mult4")
            d = q.dequantize()[:, : w.shape[1]]
            wbits = 4
        else:
            ww, hh = w, h
            if v["kind"] == "ovp4" and w.shape[1] % 2:
                ww, hh = torch.nn.functional.pad(w, (0, 1)), torch.nn.functional.pad(h, (0, 1, 0, 1))
            opts = dict(act_order=v["order"] == "act", damp=v["damp"], group=group, group_factors="mult4")
            q = gptq.gptq_ovp(ww, hh, **opts) if v["kind"] == "ovp4" else gptq.gptq_int4(ww, hh, **opts)
            d = q.dequantize()[:, : w.shape[1]]
            wbits = 4
        if row is not None:  # w_up's output back on the original scale (the folded 1/s is w_down's)
            d = d * row.reshape(-1, 1)
        deq[n] = d.to(torch.float32)
        nn_, kk = w.shape  # bits as the compiler stores them (golden.mixed.storage_bytes)
        bits_num += 8 * storage_bytes(nn_, kk, LayerQuant(v["kind"] if wbits == 4 else "int8", "int8",
                                                          group=group if wbits == 4 else None))
        bits_den += nn_ * kk
    return deq, bits_num / bits_den


class _ScaledInputs(FakeQuantLlama):
    """FakeQuantLlama whose scaled linears take INT8 fake-quantized x / s (the folded form's input)
    with their quantized weight of w * s: the integer form up to the per-token rounding."""

    def __init__(self, config, weights, deq, scales):
        super().__init__(config, weights, deq)
        self.scales = scales

    def linear(self, name, x, weight):
        s = self.scales.get(name)
        if s is None:
            return super().linear(name, x, weight)
        from olivine.golden.contract import fake_quant_act_dynamic_int8

        return torch.matmul(fake_quant_act_dynamic_int8(x / s), self.dequantized[name].t())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--n-tokens", type=int, default=1024)
    ap.add_argument("--corpora", nargs="+", default=["lee", "shakespeare"])
    ap.add_argument("--variants", nargs="+", default=["calib=1024,rtn=w_down"])
    ap.add_argument("--greedy-n", type=int, default=0)
    ap.add_argument("--cache-dir", default="build")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    loaded = load_model(args.model)
    cfg, tok = loaded.config, loaded.tokenizer
    if args.n_tokens > calibration_offset(cfg.max_seq_len):
        raise SystemExit(f"--n-tokens {args.n_tokens} would overlap the calibration text (from token "
                         f"{calibration_offset(cfg.max_seq_len)})")
    names = [n for n, _ in loaded.weights.named_linears(include_lm_head=False)]
    texts = {c: corpus_tokens(c, tok, args.n_tokens) for c in args.corpora}
    ref = FloatLlama(cfg, loaded.weights)
    base = {c: perplexity(ref, ids) for c, ids in texts.items()}
    print("fp32 " + " ".join(f"{c}={p:.3f}" for c, p in base.items()), flush=True)
    head = quantize_weight(loaded.weights.linear("lm_head"), "int8").dequantize().to(torch.float32)
    prompts = [tok.encode(p) for p in DEFAULT_PROMPTS]
    for text in args.variants:
        v = parse_variant(text)
        hs = hessians(loaded, v["calib"], names, args.cache_dir)
        t0 = time.perf_counter()
        deq, bits = quantize_variant(loaded, v, hs, names)
        tq = time.perf_counter() - t0
        deq["lm_head"] = head
        scales = input_scales(v, hs, names, cfg)
        model = _ScaledInputs(cfg, loaded.weights, deq, scales)
        res = {c: perplexity(model, ids) for c, ids in texts.items()}
        g = (sum(greedy_agreement(ref, model, p, args.greedy_n) for p in prompts) / len(prompts)) \
            if args.greedy_n else None
        line = " ".join(f"{c}={p:.2f} ({p / base[c]:.3f}x)" for c, p in res.items())
        print(f"{text:40s} bits={bits:.3f} {line}" + (f" greedy={g:.3f}" if g is not None else "")
              + f" quant={tq:.0f}s load={os.getloadavg()[0]:.1f}", flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps({"model": cfg.name, "variant": text, "n_tokens": args.n_tokens, "bits": bits,
                                    **{f"ppl_{c}": p for c, p in res.items()},
                                    **{f"ratio_{c}": p / base[c] for c, p in res.items()},
                                    "greedy": g, "quant_s": tq}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
