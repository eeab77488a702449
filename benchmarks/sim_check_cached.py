"""A preset on a real model through the compiler and the functional simulator, against golden's QLlama:
the quantized model comes from the quantized-model cache (golden/qcache.py) with the calibration tokens
golden.accuracy uses at N = 1024, so a model bench_accuracy.py already quantized is not quantized again;
prompt + N greedy tokens, tokens and every int32 logit compared.

    .venv/bin/python benchmarks/sim_check_cached.py --model smollm2 --preset w4a8-ovp-gptq-g128 --tokens 8
"""
import argparse
import time

import torch
from olivine.compiler.compile import compile_model
from olivine.compiler.spec import spec_from_qllama
from olivine.golden.data import calibration_tokens
from olivine.golden.loaders import load_model
from olivine.golden.qcache import quantize_cached
from olivine.golden.qconfig import QuantConfig
from olivine.hw.config import for_board
from olivine.sim.runtime import Runtime, golden_generate

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--model", default="smollm2")
ap.add_argument("--preset", default="w4a8-ovp-gptq-g128")
ap.add_argument("--tokens", type=int, default=8)
ap.add_argument("--prompt", default="The capital of France is")
args = ap.parse_args()
t0 = time.time()
m = load_model(args.model)
calib = calibration_tokens(m.tokenizer, max_seq_len=m.config.max_seq_len, n_eval=1024)
q = quantize_cached(m, QuantConfig.preset(args.preset), calib)
print("quantized (cache)", round(time.time() - t0), "s", flush=True)
ids = m.tokenizer.encode(args.prompt)
ctx = -(-(len(ids) + args.tokens) // 16) * 16
comp = compile_model(spec_from_qllama(q, args.model), for_board("u280"), max_context=ctx,
                     max_prompt=-(-len(ids) // 16) * 16, prefill_step=16, decode_step=16)
print("compiled", round(time.time() - t0), "s", flush=True)
toks, logits = Runtime.from_compiled(comp).generate(ids, args.tokens)
g_toks, g_logits = golden_generate(q, ids, args.tokens)
diff = max(int((a.to(torch.int64) - b.to(torch.int64)).abs().max()) for a, b in zip(logits, g_logits))
print("tokens", toks, g_toks, "equal", toks == g_toks, "max logit diff", diff, round(time.time() - t0), "s", flush=True)
