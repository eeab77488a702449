"""Golden speed on real shapes: OVP quantization of SmolLM2-135M and of LLaMA2-7B-shaped weights,
and golden's integer forward of SmolLM2 over 1,024 tokens.

    .venv/bin/python benchmarks/bench_golden_speed.py quantize --model smollm2 [--preset w4a8-ovp]
    .venv/bin/python benchmarks/bench_golden_speed.py quantize --llama7b [--layers 32]
    .venv/bin/python benchmarks/bench_golden_speed.py forward [--preset w8a8] [--tokens 1024] [--save F | --check F]

Always an empty cache: quantize_model is called directly (golden.qcache is not involved).
Prints wall and process CPU seconds (the machine is shared: wall includes waiting for a core).
``--llama7b`` quantizes one matrix of each distinct shape of a LLaMA2-7B layer (wq..wo 4096x4096,
w_gate/w_up 11008x4096, w_down 4096x11008; N(0, 0.02) with 0.2% x20 spikes) with OVP4
(normal=auto, per row), and scales the per-layer figure to ``--layers`` layers.
``--check`` compares the int32 logits with a file written by ``--save`` (e.g. by an older checkout).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402


def _clock():
    return time.perf_counter(), time.process_time()


def _since(t):
    return time.perf_counter() - t[0], time.process_time() - t[1]


def quantize_smollm2(preset: str) -> None:
    from olivine.golden.loaders import load_model
    from olivine.golden.qmodel import quantize_model

    m = load_model("smollm2")
    t = _clock()
    q = quantize_model(m.config, m.weights, preset)
    wall, cpu = _since(t)
    kinds = {}
    for lin in q.linears.values():
        if lin.weight is not None and lin.weight.kind == "ovp4":
            kinds[lin.weight.normal] = kinds.get(lin.weight.normal, 0) + 1
    print(f"SmolLM2-135M {preset}: quantize_model {wall:.1f} s wall, {cpu:.1f} s CPU; OVP normal types {kinds}")


def quantize_llama7b(layers: int) -> None:
    from olivine.golden import ovp

    g = torch.Generator().manual_seed(0)
    per_layer_wall = per_layer_cpu = 0.0
    for name, (rows, cols), count in (("wq/wk/wv/wo", (4096, 4096), 4), ("w_gate/w_up", (11008, 4096), 2),
                                      ("w_down", (4096, 11008), 1)):
        w = torch.randn(rows, cols, generator=g) * 0.02
        w = torch.where(torch.rand(rows, cols, generator=g) < 0.002, w * 20, w)
        t = _clock()
        qt = ovp.quantize(w, normal="auto")
        wall, cpu = _since(t)
        per_layer_wall += count * wall
        per_layer_cpu += count * cpu
        print(f"  {name} {rows}x{cols}: {wall:.2f} s wall, {cpu:.2f} s CPU -> {qt.normal}", flush=True)
        del w, qt
    print(f"LLaMA2-7B shape, OVP4 per row: {per_layer_wall:.1f} s wall / {per_layer_cpu:.1f} s CPU per layer; "
          f"x{layers} layers: {per_layer_wall * layers / 60:.1f} min wall, {per_layer_cpu * layers / 60:.1f} min CPU")


def forward(preset: str, n_tokens: int, save: str | None, check: str | None) -> int:
    from olivine.golden import data
    from olivine.golden.loaders import load_model
    from olivine.golden.qmodel import quantize_model

    m = load_model("smollm2")
    q = quantize_model(m.config, m.weights, preset)
    tokens = data.corpus_tokens("lee", m.tokenizer, n_tokens)
    t = _clock()
    logits = q.forward_int(tokens)
    wall, cpu = _since(t)
    print(f"SmolLM2-135M {preset}: integer forward of {n_tokens} tokens {wall:.1f} s wall, {cpu:.1f} s CPU")
    if save:
        torch.save(logits, save)
    if check:
        ref = torch.load(check)
        same = torch.equal(ref, logits)
        diff = int((ref.long() - logits.long()).abs().max()) if ref.shape == logits.shape else None
        print(f"int32 logits identical to {check}: {same} (max difference {diff} LSB)")
        return 0 if same else 1
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("quantize")
    p.add_argument("--model", default=None, help="smollm2")
    p.add_argument("--preset", default="w4a8-ovp")
    p.add_argument("--llama7b", action="store_true")
    p.add_argument("--layers", type=int, default=32)
    p = sub.add_parser("forward")
    p.add_argument("--preset", default="w8a8")
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--save", default=None)
    p.add_argument("--check", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import olivine.golden

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}, "
          f"golden from {os.path.dirname(olivine.golden.__file__)}", flush=True)
    if args.what == "forward":
        return forward(args.preset, args.tokens, args.save, args.check)
    if args.model:
        quantize_smollm2(args.preset)
    if args.llama7b:
        quantize_llama7b(args.layers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
