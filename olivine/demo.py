"""``olivine demo`` and ``olivine accuracy``: wiring of the rooms for the main job.

At this stage the demo quantizes the embedded default model (glassllm) with OVP and prints its
accuracy against fp32 (perplexity on two texts, next-token and greedy agreement).
"""

from __future__ import annotations

import sys
import time

DEMO_PRESETS = ("fp32", "w8a8", "w4a8-int4", "w4a8-ovp", "w4a4-ovp")


def parse_presets(text: str | None, default=DEMO_PRESETS) -> tuple[str, ...]:
    """``"fp32,w8a8"`` -> ("fp32", "w8a8"); every name must be a preset (QuantConfigError otherwise)."""
    from olivine.golden.qconfig import PRESETS, QuantConfigError

    if text is None:
        return tuple(default)
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [n for n in names if n not in PRESETS]
    if unknown or not names:
        what = f"unknown preset(s) {', '.join(map(repr, unknown))}" if unknown else f"no preset in {text!r}"
        raise QuantConfigError(f"{what}; choose from {', '.join(PRESETS)} (comma-separated)")
    return names


def _print_accuracy(model: str, corpora, tokens, presets, title: str, as_json: bool = False, budgets=()) -> int:
    from rich.console import Console

    from olivine.golden.accuracy import accuracy_report, accuracy_rich_table, accuracy_table

    if as_json:  # one JSON object on stdout, nothing else
        import json

        t0 = time.perf_counter()
        rows = accuracy_table(model, presets, corpora=corpora, n_tokens=tokens, budgets=budgets)
        print(json.dumps(accuracy_report(rows, time.perf_counter() - t0), indent=2))
        return 1 if any(r.status != "ok" for r in rows) else 0
    # Wide enough for the whole table when the output is a file or a CI log.
    console = Console() if sys.stdout.isatty() else Console(width=160)
    # accuracy_table shows its own progress (a bar in a terminal, a line per step in a log)
    rows = accuracy_table(model, presets, corpora=corpora, n_tokens=tokens, budgets=budgets)
    console.print(accuracy_rich_table(rows, title=title))
    failed = [r for r in rows if r.status != "ok"]
    for row in failed:
        console.print(f"[yellow]{row.preset}: {row.status}[/]")
    return 1 if failed else 0


def _check_compiled(model: str, preset: str, max_new_tokens: int) -> int:
    """Compile ``model`` and run it on the functional simulator against golden, token for token."""
    from olivine.sim.runtime import check_against_golden

    print(f"compiling {model} ({preset}) and running prompt + {max_new_tokens} tokens on the functional "
          "simulator against golden ...", flush=True)
    report = check_against_golden(model=model, preset=preset, max_new_tokens=max_new_tokens)
    ok = report["tokens_equal"] and report["logits_equal"]
    print(f"  {'bit-exact' if ok else 'MISMATCH'}: tokens equal {report['tokens_equal']}, int32 logits equal "
          f"{report['logits_equal']} (max difference {report['max_logit_diff']} LSB); compile "
          f"{report['compile_seconds']:.1f} s; simulator {report['sim_tokens_per_s']:.2f} tokens/s")
    print(f"  text: {report['text']!r}")
    return 0 if ok else 1


def run(model: str = "glassllm", tokens: int | None = None, presets: str | None = None,
        compiled_preset: str = "w4a8-ovp", max_new_tokens: int = 32) -> int:
    t0 = time.perf_counter()
    rc = _print_accuracy(model, ("shakespeare", "lee"), tokens, parse_presets(presets, DEMO_PRESETS),
                         f"olivine demo: {model}, OVP and integer quantization vs fp32")
    rc = max(rc, _check_compiled(model, compiled_preset, max_new_tokens))
    print(f"demo finished in {time.perf_counter() - t0:.1f} s")
    return rc


def accuracy(model: str = "glassllm", corpus: str = "shakespeare", tokens: int | None = None,
             presets: str | None = None, as_json: bool = False, budgets=()) -> int:
    from olivine.golden.accuracy import DEFAULT_PRESETS

    return _print_accuracy(model, (corpus,), tokens, parse_presets(presets, DEFAULT_PRESETS),
                           f"{model} on {corpus}", as_json=as_json, budgets=tuple(budgets or ()))
