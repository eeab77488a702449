"""AWQ-style input-channel scaling of w_down (a compile-time re-parametrization inside the contract).

SwiGLU's output x = silu(gate) * up feeds w_down; scaling up's output row j by 1/s_j and w_down's
column j by s_j leaves the float model unchanged (w_up's per-row scale absorbs 1/s_j exactly), but
moves precision: w_down's salient input channels (large mean |x_j|) get larger weights, and the
INT8 per-token input x/s gets a smaller range. s_j = mean|x_j|**alpha (normalized to a geometric
mean of 1), measured on the calibration rule's tokens. Float fake-quant path: the other decoder
linears take --weights-cache (bench_accuracy_breakdown.py's GPTQ g128 weights) and INT8 inputs;
w_down takes OVP4 round-to-nearest with 4-bit group multipliers per 128 of W * diag(s).

    .venv/bin/python benchmarks/bench_down_scaling.py --alphas 0 0.5 --n-tokens 256
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from olivine.golden import gptq  # noqa: E402
from olivine.golden.accuracy import perplexity  # noqa: E402
from olivine.golden.contract import fake_quant_act_dynamic_int8  # noqa: E402
from olivine.golden.data import corpus_tokens, model_calibration_tokens  # noqa: E402
from olivine.golden.loaders import load_model  # noqa: E402
from olivine.golden.model import FloatLlama  # noqa: E402


class _AbsMean(FloatLlama):
    def __init__(self, config, weights):
        super().__init__(config, weights)
        self.sums, self.rows = {}, {}

    def linear(self, name, x, weight):
        if name.endswith(".w_down"):
            x2 = x.reshape(-1, x.shape[-1])
            self.sums[name] = self.sums.get(name, 0) + x2.abs().sum(0).double()
            self.rows[name] = self.rows.get(name, 0) + x2.shape[0]
        return super().linear(name, x, weight)


class _Scaled(FloatLlama):
    def __init__(self, config, weights, deq, down, scales):
        super().__init__(config, weights)
        self.deq, self.down, self.scales = deq, down, scales

    def linear(self, name, x, weight):
        if name in self.down:
            return torch.matmul(fake_quant_act_dynamic_int8(x / self.scales[name]), self.down[name].t())
        return torch.matmul(fake_quant_act_dynamic_int8(x), self.deq.get(name, weight).t())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--n-tokens", type=int, default=256)
    ap.add_argument("--corpora", nargs="+", default=["lee"])
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.5])
    ap.add_argument("--weights-cache", default="build/breakdown-smollm2-135m-ovp4-gptq-g128.pt")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    loaded = load_model(args.model)
    cfg, tok = loaded.config, loaded.tokenizer
    deq = torch.load(args.weights_cache)
    rec = _AbsMean(cfg, loaded.weights)
    calib = model_calibration_tokens(loaded)
    with torch.no_grad():
        rec.forward(calib)
    mean_abs = {n: (rec.sums[n] / rec.rows[n]).float().clamp(min=1e-6) for n in rec.sums}
    texts = {c: corpus_tokens(c, tok, args.n_tokens) for c in args.corpora}
    base = {c: perplexity(FloatLlama(cfg, loaded.weights), ids) for c, ids in texts.items()}
    print("fp32", {c: round(v, 3) for c, v in base.items()}, flush=True)
    for alpha in args.alphas:
        t0 = time.perf_counter()
        scales, down = {}, {}
        for n, m in mean_abs.items():
            s = m.pow(alpha)
            s = s / s.log().mean().exp()
            scales[n] = s
            w = loaded.weights.linear(n).float() * s
            down[n] = gptq.rtn_grouped(w, "ovp4", 128, "mult4").dequantize()
        model = _Scaled(cfg, loaded.weights, deq, down, scales)
        res = {c: perplexity(model, ids) for c, ids in texts.items()}
        print(f"alpha={alpha}: " + " ".join(f"{c}={v:.2f} ({v / base[c]:.3f}x, dNLL {math.log(v / base[c]):+.4f})"
                                           for c, v in res.items()) + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
