"""The ``olivine`` command line: a thin front door that only wires the rooms together."""

from __future__ import annotations

import argparse
import sys


def _params(pairs: list[str]) -> dict[str, str]:
    """Turn ``--name value`` leftovers into a dict; reject anything else."""
    params: dict[str, str] = {}
    it = iter(pairs)
    for token in it:
        if not token.startswith("--") or len(token) < 3:
            raise SystemExit(f"olivine resources: expected '--param value', got {token!r}")
        key = token[2:].replace("-", "_")
        if "=" in key:
            key, value = key.split("=", 1)
        else:
            try:
                value = next(it)
            except StopIteration:
                raise SystemExit(f"olivine resources: parameter --{key} needs a value") from None
        params[key] = value
    return params


def _cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import run

    return run(as_json=args.json)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run

    return run(model=args.model, tokens=args.tokens, presets=args.presets)


def _cmd_accuracy(args: argparse.Namespace) -> int:
    from .demo import accuracy

    return accuracy(model=args.model, corpus=args.corpus, tokens=args.tokens, presets=args.presets, as_json=args.json)


def _cmd_resources(args: argparse.Namespace, extra: list[str]) -> int:
    from olivine.hw.resources import cli

    return cli(args.unit, _params(extra), family=args.family, as_json=args.json) or 0


def _cmd_diagrams(args: argparse.Namespace) -> int:
    from olivine.hw.diagrams import main as diagrams_main

    diagrams_main(["--out", args.out])
    return 0


def _cmd_compile(args: argparse.Namespace) -> int:
    from olivine.compiler.compile import compile_main

    return compile_main(model=args.model, board=args.board, weights=args.weights, sparsity=args.sparsity,
                        preset=args.preset, out=args.output, max_context=args.max_context,
                        max_prompt=args.max_prompt)


def _cmd_run(args: argparse.Namespace) -> int:
    from olivine.sim.funcsim import run_main

    return run_main(args.directory, args.prompt, max_new_tokens=args.max_new_tokens, backend=args.backend)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="olivine", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("doctor", help="check the toolchain and print how to fix what is missing")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_doctor)

    p = sub.add_parser("demo", help="the main job on the embedded default model (glassllm)")
    p.add_argument("--model", default="glassllm", help="glassllm (default), smollm2 or a path")
    p.add_argument("--tokens", type=int, default=None, help="tokens of text to evaluate")
    p.add_argument("--presets", default=None, help="comma-separated precision presets")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("accuracy", help="perplexity and agreement of precision presets on a model")
    p.add_argument("--model", default="glassllm")
    p.add_argument("--corpus", default="shakespeare", help="shakespeare or lee")
    p.add_argument("--tokens", type=int, default=None)
    p.add_argument("--presets", default=None, help="comma-separated precision presets")
    p.add_argument("--json", action="store_true", help="print one JSON object (perplexity, agreement, seconds)")
    p.set_defaults(func=_cmd_accuracy)

    p = sub.add_parser("resources", help="synthesize a hardware unit with Yosys and count resources",
                       description="Unit parameters follow as --name value (e.g. --length 8).")
    p.add_argument("unit", help="unit name (e.g. sparse_chain, ovp_decoder, ovp_array, dsp48e2)")
    p.add_argument("--family", default="xcup", help="Yosys synth_xilinx family (default xcup)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_resources, takes_extra=True)
    p = sub.add_parser("diagrams", help="draw the sparse DSP chain and the OVP array from the generators")
    p.add_argument("--out", default="docs/img", help="output directory (default docs/img)")
    p.set_defaults(func=_cmd_diagrams)

    p = sub.add_parser("compile", help="compile a quantized model to programs per length bucket + weight image")
    p.add_argument("--model", default="glassllm", help="glassllm, smollm2 or a path (HF LlamaForCausalLM dir or .gguf)")
    p.add_argument("--board", default="u280", help="target board (u280, u55c, u50, u250, vhk158)")
    p.add_argument("--preset", default=None, help="precision preset (default w4a8-ovp)")
    p.add_argument("--weights", default=None, choices=("ovp4", "int4", "int8"), help="override weight precision")
    p.add_argument("--sparsity", default=None, help="N:16 weight sparsity, e.g. 8:16")
    p.add_argument("--max-context", type=int, default=None, help="largest decode context bucket")
    p.add_argument("--max-prompt", type=int, default=None, help="largest prefill bucket")
    p.add_argument("-o", "--output", required=True, help="artifact directory to write (atomically)")
    p.set_defaults(func=_cmd_compile)

    p = sub.add_parser("run", help="generate text from a compiled artifact")
    p.add_argument("directory", help="artifact directory written by `olivine compile`")
    p.add_argument("--backend", default="isa", choices=("isa",), help="isa: the functional simulator")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.set_defaults(func=_cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        if getattr(args, "takes_extra", False):
            return args.func(args, extra)
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as exc:
        # Errors from the rooms are written to be read: print them without a traceback.
        print(f"olivine {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
