"""Compile time and instruction storage per length bucket (docs/benchmarks.md, "Compiler and functional simulator").

    .venv/bin/python benchmarks/bench_compile.py [--models glassllm,smollm2,llama2-7b] [--max-len 2048]

glassllm is compiled from its golden quantized model (w4a8-ovp weights); SmolLM2-135M and
LLaMA2-7B from their shapes (spec_from_shapes: OVP4 weights, INT8 lm_head), which gives the same
programs as the real weights (programs depend only on shapes and formats) without materializing
7B weights. Prints per-bucket instruction counts and bytes, the total, the factor saved against
one program per length, and the compile time.
"""

from __future__ import annotations

import argparse
import time

from olivine.compiler.compile import compile_model, storage_report
from olivine.compiler.spec import spec_from_qllama, spec_from_shapes
from olivine.golden.model import LlamaConfig
from olivine.hw.config import for_board

SHAPES = {
    "smollm2": LlamaConfig(vocab_size=49152, dim=576, n_layers=30, n_heads=9, n_kv_heads=3, head_dim=64,
                           ffn_dim=1536, max_seq_len=8192, rope_theta=100000.0, name="smollm2-135m-shape"),
    "llama2-7b": LlamaConfig(vocab_size=32000, dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, head_dim=128,
                             ffn_dim=11008, max_seq_len=4096, name="llama2-7b-shape"),
}


def spec_for(name: str):
    if name == "glassllm":
        from olivine.golden.loaders import load_model
        from olivine.golden.qmodel import quantize_model

        m = load_model("glassllm")
        return spec_from_qllama(quantize_model(m.config, m.weights, "w4a8-ovp"), "glassllm")
    return spec_from_shapes(SHAPES[name])


def report(name: str, max_len: int) -> dict:
    spec = spec_for(name)
    max_len = min(max_len, spec.config.max_seq_len)
    t0, c0 = time.perf_counter(), time.process_time()
    comp = compile_model(spec, for_board("u280"), max_context=max_len, max_prompt=max_len,
                         materialize=spec.materialized)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    rep = storage_report(comp)
    print(f"\n== {name}: {len(rep['prefill'])} prefill + {len(rep['decode'])} decode programs up to {max_len} "
          f"tokens, prefill chunk {comp.prefill_rows} rows, compiled in {dt:.1f} s wall, {cpu:.1f} s CPU (affine: {comp.affine})", flush=True)
    for kind in ("prefill", "decode"):
        rows = sorted(rep[kind].items())
        show = rows if len(rows) <= 6 else rows[:2] + [r for r in rows if r[0] in (512, 1024)] + rows[-1:]
        for b, st in show:
            print(f"  {kind:7s} {b:5d}: {st['instructions']:9d} instructions {st['bytes'] / 1e6:9.3f} MB  "
                  f"ST kv {st['st_kv']} output {st['st_output']} activation {st['st_activation']}")
    wb = [b for b in rep["weight_bytes_per_channel"]]
    print(f"  total {rep['total_bytes'] / 1e6:.1f} MB of programs; one program per length would be "
          f"{rep['per_length_bytes'] / 1e9:.2f} GB: {rep['saved_factor']:.0f}x saved")
    print(f"  weight image per channel: min {min(wb) / 1e6:.2f} MB, max {max(wb) / 1e6:.2f} MB, "
          f"total {sum(wb) / 1e6:.1f} MB", flush=True)
    return rep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="glassllm,smollm2,llama2-7b")
    ap.add_argument("--max-len", type=int, default=2048)
    args = ap.parse_args()
    for name in args.models.split(","):
        report(name.strip(), args.max_len)


if __name__ == "__main__":
    main()
