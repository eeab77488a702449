"""Mixed precision under a weight-size budget (golden/mixed.py): perplexity vs average weight bits.

For each budget: golden.mixed's assignment (per-linear sensitivity, knapsack), quantized with
golden's integer model (golden/qmodel.py through the quantized-model cache) and its TRUE
perplexity on the first N tokens of a corpus (one window of N - 1 targets); the uniform presets
at their own average bits for comparison. Also the sensitivity proxy against the true NLL increase
of single-linear substitutions (float model, weight-only) on the same tokens. Bits count what the
compiler stores per decoder linear (weight values, 16-byte requantization entry per row, sparse
block table and indices; golden.mixed.storage_bytes); lm_head/embedding (INT8 everywhere) are
not counted.

    .venv/bin/python benchmarks/bench_mixed.py --model smollm2 --n-tokens 1024 \\
        --budgets 3.5 4 4.5 5 6 8 --json build/mixed.jsonl --figure docs/figures/mixed_precision.png --markdown
    .venv/bin/python benchmarks/bench_mixed.py --replot build/mixed.jsonl --figure docs/figures/mixed_precision.png --markdown
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

DEFAULT_PRESETS = ("fp32", "w8a8", "w4a8-ovp", "w4a8-ovp-gptq", "w4a8-int4", "w4a8-ovp-down8", "w4a8-int4-gptq",
                   "w4a8-ovp-8:16")


def _validation_pairs(sens, per_choice: int, choices):
    pairs = []
    for c in choices:
        if c not in sens.choices:
            continue
        ranked = sorted(sens.names, key=lambda n: sens.delta_nll[n][c])
        picks = [ranked[-1], ranked[len(ranked) // 2], ranked[0]][:per_choice]
        pairs += [(n, c) for n in picks]
    return pairs


def _memoise_gptq() -> None:
    """GPTQ per linear is independent of the other linears quantized in the same call (each one's
    Hessian comes from its own input), so within this process every (linear, kind) is computed
    once and reused by every configuration that asks for it (results identical; a benchmark
    shortcut only, golden itself is unchanged)."""
    import hashlib

    import torch

    from olivine.golden import gptq

    original = gptq.quantize_linears
    memo: dict = {}

    def quantize_linears(config, weights, calib_tokens, kinds, **options):
        tag = (id(weights), hashlib.sha256(torch.as_tensor(calib_tokens).numpy().tobytes()).hexdigest(),
               repr(sorted(options.items())))
        todo = {n: k for n, k in kinds.items() if (tag, n, k) not in memo}
        if todo:
            for n, qw in original(config, weights, calib_tokens, todo, **options).items():
                memo[(tag, n, todo[n])] = (qw, weights)  # keep weights alive: its id stays unique
        return {n: memo[(tag, n, k)][0] for n, k in kinds.items()}

    gptq.quantize_linears = quantize_linears


def run(args) -> list[dict]:
    from olivine.golden import mixed
    from olivine.golden.accuracy import perplexity
    from olivine.golden.data import corpus_tokens, model_calibration_tokens
    from olivine.golden.loaders import load_model
    from olivine.golden.qcache import quantize_cached
    from olivine.golden.qconfig import QuantConfig
    from olivine.golden.qmodel import quantize_model

    _memoise_gptq()
    out = Path(args.json) if args.json else None
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("")

    def emit(row):
        print(json.dumps(row), flush=True)
        if out:
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")

    loaded = load_model(args.model)
    cfg = loaded.config
    ids = corpus_tokens(args.corpus, loaded.tokenizer, args.n_tokens)
    calib = model_calibration_tokens(loaded, n_eval=args.n_tokens)
    t0 = time.perf_counter()
    sens = None
    if args.budgets or args.validate:
        sens = mixed.model_sensitivity(loaded, progress=print, n_eval=args.n_tokens)
    if sens is not None:
        emit({"kind": "sensitivity", "model": cfg.name, "seconds": round(time.perf_counter() - t0, 1),
          "measured_seconds": round(sens.seconds, 1), "scored_tokens": sens.calib_tokens,
          "min_budget_bits": mixed.min_budget_bits(cfg, sens.choices),
          "uniform_predicted_delta_nll": {c: sum(sens.delta_nll[n][c] for n in sens.names) for c in sens.choices}})
    if args.validate and sens is not None:
        for r in mixed.validate_sensitivity(cfg, loaded.weights, sens, ids, _validation_pairs(sens, args.validate, args.validate_choices),
                                            calib_tokens=calib):
            emit({"kind": "validation", "model": cfg.name, "corpus": args.corpus, "n_tokens": args.n_tokens, **r})
    presets = [("preset", p, QuantConfig.preset(p), None) for p in args.presets]
    budgets = []
    for b in args.budgets:
        a = mixed.assign(sens, b, args.choices)
        budgets.append(("budget", mixed.BUDGET_NAME.format(b) + args.tag, mixed.budget_config(a), a))
    configs = presets[:1] + budgets + presets[1:]  # fp32 (the reference), the curve, then the presets
    fp32_ppl = None
    for kind, name, qcfg, a in configs:
        t1 = time.perf_counter()
        choice = a.choice if a is not None else mixed.assignment_of(qcfg, cfg)
        predicted = None if sens is None or any(c is None for c in choice.values()) else \
            sum(sens.delta_nll[n][c] for n, c in choice.items())
        c_tokens = calib if qcfg.needs_calibration() else None
        # presets through the quantized-model cache; budget models (one-off, ~330 MB each) built directly
        model = quantize_cached(loaded, qcfg, c_tokens) if kind == "preset" else \
            quantize_model(cfg, loaded.weights, qcfg, c_tokens, show_progress=False)
        ppl = perplexity(model, ids)
        if name == "fp32":
            fp32_ppl = ppl
        counts = {}
        for c in choice.values():
            counts[c] = counts.get(c, 0) + 1
        emit({"kind": kind, "name": name, "model": cfg.name, "corpus": args.corpus, "n_tokens": args.n_tokens,
              "average_bits": None if qcfg.is_float else mixed.config_bits(qcfg, cfg),
              "perplexity": ppl, "fp32_perplexity": fp32_ppl,
              "predicted_delta_nll": predicted,
              "predicted_perplexity": None if predicted is None or fp32_ppl is None else fp32_ppl * math.exp(predicted),
              "counts": {k: v for k, v in counts.items() if k is not None}, "seconds": round(time.perf_counter() - t1, 1)})
    return [json.loads(line) for line in out.read_text().splitlines()] if out else []


_UNIFORM = {"w8a8": "int8", "w4a8-ovp": "ovp4", "w4a8-ovp-gptq": "ovp4-gptq", "w4a8-int4": "int4",
            "w4a8-int4-gptq": "int4-gptq"}


def _fill_uniform_predictions(rows: list[dict]) -> None:
    """Predictions of uniform presets measured without the sensitivity (a separate run)."""
    sens = next((r for r in rows if r["kind"] == "sensitivity"), None)
    fp32 = next((r["perplexity"] for r in rows if r.get("name") == "fp32"), None)
    if sens is None or fp32 is None:
        return
    for r in rows:
        if r["kind"] == "preset" and r.get("predicted_delta_nll") is None and r["name"] in _UNIFORM:
            d = sens["uniform_predicted_delta_nll"].get(_UNIFORM[r["name"]])
            if d is not None:
                r["predicted_delta_nll"], r["predicted_perplexity"] = d, fp32 * math.exp(d)


def figure(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fp32 = next(r["perplexity"] for r in rows if r.get("name") == "fp32")
    series: dict[str, list[dict]] = {}
    for r in rows:
        if r["kind"] == "budget":
            tag = r["name"].split("-", 2)[2] if r["name"].count("-") >= 2 else ""
            series.setdefault(tag, []).append(r)
    presets = [r for r in rows if r["kind"] == "preset" and r["average_bits"] is not None]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for i, (tag, budgets) in enumerate(sorted(series.items())):
        budgets.sort(key=lambda r: r["average_bits"])
        color = f"C{i}"
        what = {"": "mixed: INT8/OVP4/INT4/N:16, round to nearest", "gptq": "mixed: + GPTQ grids"}.get(tag, tag)
        ax.plot([r["average_bits"] for r in budgets], [r["perplexity"] for r in budgets], "o-", color=color,
                label=f"{what} (measured)")
        pred = [r for r in budgets if r.get("predicted_perplexity")]
        ax.plot([r["average_bits"] for r in pred], [r["predicted_perplexity"] for r in pred], "x--", color=color,
                alpha=0.5, label=f"{what} (predicted)")
        for r in budgets:
            ax.annotate(r["name"].replace("budget-", ""), (r["average_bits"], r["perplexity"]),
                        textcoords="offset points", xytext=(4, 6), fontsize=7, color=color)
    ax.plot([r["average_bits"] for r in presets], [r["perplexity"] for r in presets], "s", color="C3",
            label="uniform presets")
    for r in presets:
        ax.annotate(r["name"], (r["average_bits"], r["perplexity"]), textcoords="offset points", xytext=(4, -10),
                    fontsize=7, color="C3")
    ax.axhline(fp32, color="k", ls=":", lw=1, label=f"fp32 ({fp32:.1f})")
    ax.axvline(3.5, color="C2", ls="--", lw=1, label="FlightLLM average (~3.5 bits)")
    ax.set_yscale("log")
    ax.set_xlabel("average weight bits (values + per-row scale entries + sparse metadata)")
    ax.set_ylabel("perplexity (log scale)")
    r0 = rows[-1]
    ax.set_title(f"{r0['model']}: perplexity vs weight bits, {r0['corpus']} first {r0['n_tokens']} tokens "
                 "(integer model)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)
    print(f"figure -> {path}")


def markdown(rows: list[dict]) -> str:
    lines = ["| configuration | average bits | ppl (measured) | x fp32 | ppl predicted | choices |", "|---|---|---|---|---|---|"]
    cfgs = [r for r in rows if r["kind"] in ("preset", "budget")]
    fp32 = next(r["perplexity"] for r in cfgs if r["name"] == "fp32")
    for r in sorted(cfgs, key=lambda r: (r["average_bits"] or 99, r["kind"])):
        bits = "32 (float)" if r["average_bits"] is None else f"{r['average_bits']:.3f}"
        pred = f"{r['predicted_perplexity']:.2f}" if r.get("predicted_perplexity") else "-"
        counts = ", ".join(f"{c} x{n}" for c, n in sorted(r["counts"].items(), key=lambda kv: -kv[1])) \
            if r["kind"] == "budget" else ""
        lines.append(f"| {r['name']} | {bits} | {r['perplexity']:.2f} | {r['perplexity'] / fp32:.2f} | {pred} | {counts} |")
    val = [r for r in rows if r["kind"] == "validation"]
    if val:
        lines += ["", "| linear | choice | predicted dNLL | measured dNLL |", "|---|---|---|---|"]
        lines += [f"| {r['linear']} | {r['choice']} | {r['predicted']:.4f} | {r['measured']:.4f} |" for r in val]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--corpus", default="lee")
    p.add_argument("--n-tokens", type=int, default=1024)
    p.add_argument("--budgets", type=float, nargs="*", default=[3.5, 4.0, 4.5, 5.0, 6.0, 8.0])
    p.add_argument("--presets", nargs="*", default=list(DEFAULT_PRESETS))
    p.add_argument("--choices", nargs="+", default=None,
                   help="restrict the assignment to these golden.mixed choices (default: all measured)")
    p.add_argument("--validate-choices", nargs="+", default=["ovp4", "ovp4-gptq", "int8-8:16"],
                   help="choices whose single-linear substitutions validate the proxy")
    p.add_argument("--tag", default="", help="suffix of the budget rows' names (e.g. '-rtn' for a restricted run)")
    p.add_argument("--validate", type=int, default=3, help="linears per choice in the proxy validation (0: none)")
    p.add_argument("--json", default=None, help="write the rows as JSON lines here")
    p.add_argument("--replot", default=None, nargs="+",
                   help="draw/print from earlier --json files (rows merged) instead of measuring")
    p.add_argument("--figure", default=None)
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args(argv)
    if args.replot:
        rows, seen = [], set()
        for f in args.replot:
            for line in Path(f).read_text().splitlines():
                row = json.loads(line)
                key = (row["kind"], row.get("name"), row.get("linear"), row.get("choice"))
                if key not in seen:  # a configuration measured in two runs counts once (the first)
                    seen.add(key)
                    rows.append(row)
        _fill_uniform_predictions(rows)
    else:
        if "fp32" not in args.presets:
            args.presets = ["fp32", *args.presets]
        rows = run(args)
    if args.figure:
        figure(rows, args.figure)
    if args.markdown:
        print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
