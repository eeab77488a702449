"""The ``olivine`` command line: a thin front door that only wires the rooms together.

Errors share one form on one line of stderr, ``olivine <command>: <problem>; <fix>``, and one set
of exit codes: 0 success, 1 the work failed (a corrupt artifact, a model that does not compile, a
synthesis failure, ...), 2 a usage error (a bad option or value, an output path olivine refuses).
No user mistake prints a Python traceback; a traceback means a bug in olivine.
"""

from __future__ import annotations

import argparse
import sys

EXIT_FAILURE, EXIT_USAGE = 1, 2


class UsageError(Exception):
    """A bad command line found after parsing (exit 2); the message holds the problem and the fix."""


class _Parser(argparse.ArgumentParser):
    """argparse with the shared one-line error form and help epilogs computed only when shown."""

    def __init__(self, *args, lazy_epilog=None, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self.lazy_epilog = lazy_epilog

    def format_help(self) -> str:
        if self.lazy_epilog is not None:  # e.g. the resource units: listing them imports every generator
            self.epilog = self.lazy_epilog()
        return super().format_help()

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: {message}; see `{self.prog} --help`\n")


# ---- help texts computed from the rooms' own tables ------------------------------------------------

def _presets_help() -> str:
    from olivine.golden.qconfig import PRESETS, QuantConfig

    lines = ["precision presets (weights/activations; overrides by layer pattern):"]
    for name, (default, overrides) in PRESETS.items():
        extra = "".join(f", {pattern} {lq.describe()}" for pattern, lq in overrides.items())
        options = QuantConfig.preset(name).describe_options()
        lines.append(f"  {name:<16} {default.describe()}{extra}" + (f"; {options}" if options else ""))
    lines.append("  (ovp4 = OliVe outlier-victim pairs, 4-bit; N:16 = block sparsity; details in golden/qconfig.py)")
    return "\n".join(lines)


def _models_help() -> str:
    from olivine.golden.loaders import MODEL_NAMES

    return (f"models: {', '.join(MODEL_NAMES)} (built in; names are exact, lower-case), a Hugging Face "
            "LlamaForCausalLM directory or a .gguf file")


def _boards_help() -> str:
    from olivine.boards import BOARDS

    return f"boards: {', '.join(sorted(BOARDS))}"


def _corpora_help() -> str:
    from olivine.golden.data import CORPORA

    return f"corpora: {', '.join(CORPORA)}"


def _resources_help() -> str:
    from olivine.hw.resources import FAMILIES, describe_units

    families = ", ".join(f"{k} ({v})" for k, v in FAMILIES.items())
    return ("units, with their parameters and defaults (give them as --name value):\n" + describe_units()
            + f"\n\nfamilies: {families}")


def _joined(*parts):
    return lambda: "\n\n".join(part() for part in parts)


# ---- argument types (a bad value is a usage error, reported before any work) ------------------------

def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _bucket_step(text: str) -> int:
    value = _positive_int(text)
    if value % 16:
        raise argparse.ArgumentTypeError(f"{value} is not a multiple of 16 (the hardware's token tile); try "
                                         f"{max(16, value // 16 * 16)}")
    return value


def _preset_list(text: str) -> str:
    from olivine.demo import parse_presets
    from olivine.golden.qconfig import QuantConfigError

    try:
        parse_presets(text)
    except QuantConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("; choose from ", " (known: ").replace(
            " (comma-separated)", ")")) from None
    return text


def _budget_bits(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of bits (e.g. 4.5)") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of bits per weight (e.g. 4.5)")
    return value


def _budget_list(text: str) -> tuple[float, ...]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"no budget in {text!r}; give e.g. 4.5 or 4,4.5,5")
    return tuple(_budget_bits(p) for p in parts)


def _corpus(text: str) -> str:
    from olivine.golden.data import CORPORA

    if text not in CORPORA:
        raise argparse.ArgumentTypeError(f"unknown corpus {text!r} (known: {', '.join(CORPORA)})")
    return text


def _nonempty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty")
    return text


# ---- commands ----------------------------------------------------------------------------------------

def _cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import run

    return run(as_json=args.json)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run

    return run(model=args.model, tokens=args.tokens, presets=args.presets)


def _cmd_accuracy(args: argparse.Namespace) -> int:
    from .demo import accuracy

    return accuracy(model=args.model, corpus=args.corpus, tokens=args.tokens, presets=args.presets, as_json=args.json,
                    budgets=args.budget_bits)


def _cmd_resources(args: argparse.Namespace, extra: list[str]) -> int:
    from olivine.hw.resources import UnitError, cli, describe_units, parse_param_args

    if args.unit is None:
        if extra:
            raise UsageError(f"parameters {' '.join(extra)} given without a unit; name the unit first "
                             "(e.g. olivine resources sparse_chain --length 8)")
        print(describe_units(indent=""))
        return 0
    try:
        params = parse_param_args(extra)
    except UnitError as exc:
        raise UsageError(str(exc)) from None
    return cli(args.unit, params, family=args.family, as_json=args.json) or 0


def _cmd_diagrams(args: argparse.Namespace) -> int:
    from olivine.hw.diagrams import main as diagrams_main

    diagrams_main(["--out", args.out])
    return 0


def _cmd_hdl(args: argparse.Namespace) -> int:
    from olivine.hw.hdl import hdl_main

    return hdl_main(board=args.board, config=args.config, out=args.output, lint=args.lint, artifact=args.artifact)


def _cmd_fit(args: argparse.Namespace) -> int:
    from olivine.hw.fit import fit_main

    return fit_main(board=args.board, config=args.config, as_json=args.json)


def _cmd_compile(args: argparse.Namespace) -> int:
    from olivine.compiler.compile import compile_main

    if args.budget_bits is not None:
        clash = [opt for opt in ("preset", "weights", "sparsity") if getattr(args, opt) is not None]
        if clash:
            raise UsageError(f"--budget-bits chooses every linear's precision itself; drop "
                             f"{', '.join('--' + c for c in clash)} (or drop --budget-bits for a uniform preset)")

    return compile_main(model=args.model, board=args.board, weights=args.weights, sparsity=args.sparsity,
                        preset=args.preset, out=args.output, max_context=args.max_context,
                        max_prompt=args.max_prompt, config=args.config, budget_bits=args.budget_bits,
                        prefill_step=args.prefill_step, decode_step=args.decode_step)


def _cmd_run(args: argparse.Namespace) -> int:
    from olivine.sim.runtime import run_main

    return run_main(args.directory, args.prompt, max_new_tokens=args.max_new_tokens, backend=args.backend,
                    ignore_eos=args.ignore_eos, as_json=args.json, trace=args.trace, waves=args.waves,
                    waves_step=args.waves_step, budget=args.budget)


def _board_and_config_args(p, board_fallback: str) -> None:
    """``--board`` and ``--config NAME|FILE.json`` of the commands that build a core's configuration."""
    p.add_argument("--board", default=None, help=f"target board (default u280, or {board_fallback})")
    p.add_argument("--config", default=None, metavar="NAME|FILE.json",
                   help="a named configuration (default: sized to the board; small; tiny) or a JSON file of "
                        "AcceleratorConfig fields")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="olivine", description=__doc__.split("\n\n")[0],
                     epilog="exit status: 0 success, 1 the work failed, 2 usage error (bad option, value or "
                            "output path). Each command's --help lists its choices.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("doctor", help="check the toolchain and print how to fix what is missing",
                       description="Check every required and optional tool and package; exit 1 if a required one "
                                   "is missing (the table says how to fix it).")
    p.add_argument("--json", action="store_true", help="machine-readable output (a list of checks)")
    p.set_defaults(func=_cmd_doctor)

    p = sub.add_parser("demo", help="the main job on the embedded default model (glassllm)",
                       description="Accuracy of the precision presets against fp32 (perplexity on two texts, "
                                   "next-token and greedy agreement), then compile the model and check the "
                                   "functional simulator against golden token for token.",
                       lazy_epilog=_joined(_presets_help, _models_help))
    p.add_argument("--model", default="glassllm", type=_nonempty,
                   help="model to evaluate (default glassllm; see 'models' below)")
    p.add_argument("--tokens", type=_positive_int, default=None,
                   help="tokens of each text to evaluate (default: the model's context length)")
    p.add_argument("--presets", default=None, type=_preset_list,
                   help="comma-separated precision presets (default fp32,w8a8,w4a8-int4,w4a8-ovp,w4a4-ovp)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("accuracy", help="perplexity and agreement of precision presets on a model",
                       description="Perplexity on a corpus and next-token / greedy agreement with fp32, per "
                                   "precision preset.",
                       lazy_epilog=_joined(_presets_help, _models_help, _corpora_help))
    p.add_argument("--model", default="glassllm", type=_nonempty,
                   help="model to evaluate (default glassllm; see 'models' below)")
    p.add_argument("--corpus", default="shakespeare", type=_corpus,
                   help="text for perplexity: shakespeare (default) or lee")
    p.add_argument("--tokens", type=_positive_int, default=None,
                   help="tokens of the corpus to evaluate (default: the model's context length)")
    p.add_argument("--presets", default=None, type=_preset_list,
                   help="comma-separated precision presets (default: all of fp32, w8a8, w4a8-int4, w4a8-ovp, "
                        "w4a4-ovp, w4a8-ovp-8:16, w4a8-ovp-4:16)")
    p.add_argument("--budget-bits", default=(), type=_budget_list, metavar="BITS[,BITS...]",
                   help="also evaluate mixed precision: per budget (average weight bits, including scales and "
                        "sparse metadata) a row 'budget-<bits>' with every decoder linear assigned its choice "
                        "among INT8 / OVP4 / INT4 (round-to-nearest or GPTQ) / N:16 by the measured sensitivity "
                        "(golden/mixed.py; cached)")
    p.add_argument("--json", action="store_true", help="print one JSON object (perplexity, agreement, seconds)")
    p.set_defaults(func=_cmd_accuracy)

    p = sub.add_parser("resources", help="synthesize a hardware unit with Yosys and count resources",
                       description="Synthesize a registered hardware unit with Yosys synth_xilinx and print its "
                                   "resources. Unit parameters follow as --name value (e.g. olivine resources "
                                   "sparse_chain --length 8); without a unit, list the units.",
                       lazy_epilog=_resources_help)
    p.add_argument("unit", nargs="?", help="unit name (listed below; omit to list them)")
    p.add_argument("--family", default="xcup", help="Yosys synth_xilinx family (default xcup, UltraScale+)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_resources, takes_extra=True)

    p = sub.add_parser("diagrams", help="draw the sparse DSP chain and the OVP array from the generators",
                       description="Draw the documentation pictures from the generators' own rules. The output "
                                   "directory is written atomically and may only be new, empty or an earlier "
                                   "`olivine diagrams` output (docs/img is one).")
    p.add_argument("--out", required=True,
                   help="output directory: new, empty, or an earlier `olivine diagrams` output (replaced whole)")
    p.set_defaults(func=_cmd_diagrams)

    p = sub.add_parser("hdl", help="write the accelerator core's Verilog for a configuration",
                       description="Write olivine_core.v (the whole core: controller, LD/ST, matrix engine, SFU, "
                                   "buffers, AXI) and manifest.json (configuration, ports, register map) into a "
                                   "directory. With --artifact the configuration and the SFU's RoPE ROM come from "
                                   "a compiled model.",
                       lazy_epilog=_boards_help)
    _board_and_config_args(p, "the artifact's")
    p.add_argument("--artifact", default=None, metavar="DIR",
                   help="a compiled artifact (`olivine compile`): its configuration, and the RoPE ROM of its model "
                        "sized to its longest context")
    p.add_argument("-o", "--output", required=True,
                   help="output directory: new, empty, or an earlier `olivine hdl` output (replaced whole)")
    p.add_argument("--lint", action="store_true", help="also run verilator --lint-only -Wall on the result")
    p.set_defaults(func=_cmd_hdl)

    p = sub.add_parser("fit", help="estimate a configuration's logic (LUT, FF, SRL) per part and check it fits",
                       description="The core's logic per part (matrix engine, SFU, LD, ST, controller, guards, top), "
                                   "estimated from Yosys synth_xilinx measurements (hw/fit.py), against 70 % of the "
                                   "board's kernel LUTs and of one SLR per core, with the buffers' block / Ultra RAM "
                                   "check. Exit status 1 when the configuration does not fit (olivine hdl refuses it).",
                       lazy_epilog=_boards_help)
    _board_and_config_args(p, "the file's")
    p.add_argument("--json", action="store_true", help="print the estimate as JSON")
    p.set_defaults(func=_cmd_fit)

    p = sub.add_parser("compile", help="compile a quantized model to programs per length bucket + weight image",
                       description="Quantize a model, compile one program per prompt and context length bucket "
                                   "and write them with the weight image as an artifact directory.",
                       lazy_epilog=_joined(_presets_help, _models_help, _boards_help))
    p.add_argument("--model", default="glassllm", help="glassllm, smollm2 or a path (HF LlamaForCausalLM dir or .gguf)")
    p.add_argument("--board", default=None,
                   help="target board (u280, u55c, u50, u250, vhk158); default: the --config file's board, else u280")
    p.add_argument("--config", default=None, metavar="NAME|FILE.json",
                   help="hardware configuration: 'default' (sized to the board), 'small' (1 core, 8 chains, "
                        "buffers for glassllm), 'tiny' (small's buffers, 2 chains: for --backend rtl) or a JSON file of AcceleratorConfig fields with a nested 'buffers' "
                        "object (docs/compiler.md)")
    p.add_argument("--preset", default=None, help="precision preset (default w4a8-ovp; listed below)")
    p.add_argument("--weights", default=None, choices=("ovp4", "int4", "int8"), help="override the preset's weight precision")
    p.add_argument("--sparsity", default=None, help="override the weight sparsity: a pattern N:16 (e.g. 8:16) or 2:4, or a density in (0, 1]")
    p.add_argument("--budget-bits", default=None, type=_budget_bits, metavar="BITS",
                   help="mixed precision instead of a preset: every decoder linear gets its own format (INT8, OVP4, "
                        "INT4, round-to-nearest or GPTQ, N:16 sparse) so that the average weight bits (values, "
                        "per-row scale entries and sparse metadata as laid out) stay <= BITS with the least "
                        "predicted perplexity loss (golden/mixed.py; the assignment is recorded in the artifact); "
                        "not with --preset/--weights/--sparsity")
    p.add_argument("--max-context", type=int, default=None,
                   help="largest context (prompt + generated tokens); default: the largest that fits the "
                        "configuration's on-chip buffers, at most the model's context")
    p.add_argument("--max-prompt", type=int, default=None,
                   help="largest prompt (prefill bucket); default: the context, at most 1024")
    p.add_argument("--prefill-step", type=_bucket_step, default=128, metavar="N",
                   help="width of the prefill length buckets, a multiple of 16 (default 128); a prompt runs "
                        "its whole bucket, so a small step saves cycles on short prompts (e.g. 16 for "
                        "--backend rtl) at the cost of more programs")
    p.add_argument("--decode-step", type=_bucket_step, default=16, metavar="N",
                   help="width of the decode context buckets, a multiple of 16 (default 16)")
    p.add_argument("-o", "--output", required=True, help="artifact directory to write atomically: new, empty, or an earlier artifact (replaced)")
    p.set_defaults(func=_cmd_compile)

    p = sub.add_parser("run", help="generate text from a compiled artifact",
                       description="Greedy generation from a compiled artifact on a backend: isa (the functional "
                                   "simulator) or rtl (the RTL core, hw/core.py with the matrix engine, in the fast "
                                   "Verilator harness; built once per configuration and cached; prints cycles per "
                                   "prefill and decode step, per-unit busy / stalled cycles, HBM bytes per channel "
                                   "and tokens/s at the configured clock).")
    p.add_argument("directory", help="artifact directory written by `olivine compile`")
    p.add_argument("--backend", default="isa", choices=("isa", "rtl"),
                   help="isa: the functional simulator (default); rtl: the RTL core in Verilator")
    p.add_argument("--prompt", required=True, help="text to continue (must not be empty)")
    p.add_argument("--max-new-tokens", type=int, default=32,
                   help="tokens to generate at most (>= 1; prompt + tokens must fit the artifact's context)")
    p.add_argument("--ignore-eos", action="store_true",
                   help="keep generating after the model's end-of-sequence token")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object at the end instead of streaming text (tokens, text, stopped, seconds; "
                        "cycles, per-unit counters and HBM bytes with --backend rtl)")
    p.add_argument("--trace", default=None, metavar="FILE.json",
                   help="rtl: write a per-instruction timeline (start/end cycle of every instruction per unit, from "
                        "the RTL) as Chrome trace JSON (open in Perfetto) and FILE.png beside it")
    p.add_argument("--waves", default=None, metavar="FILE.fst|FILE.vcd",
                   help="rtl: dump the core's signals of one program run (see --waves-step) as FST or VCD")
    p.add_argument("--waves-step", type=int, default=0, metavar="K",
                   help="rtl: the program run --waves records: 0 the prefill (default), K the K-th decode step")
    p.add_argument("--budget", type=_positive_int, default=None, metavar="CYCLES",
                   help="rtl: cycles one program may take before the run stops with an error (default 50,000,000)")
    p.set_defaults(func=_cmd_run)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that report a user's mistake or a failed job, not a bug: printed without a traceback.

    Every room's own error class is a ValueError (ArtifactError, ConfigError, IsaError, CompileError,
    ModelLoadError, QuantConfigError, UnitError, ...) or one of the RuntimeErrors below (looked up
    only when their module was imported: an exception of it cannot exist otherwise).
    """
    classes: list[type[BaseException]] = [ValueError, OSError]
    for module, name in (("olivine.sim.funcsim", "SimError"), ("olivine.sim.rtl", "RtlError"),
                         ("olivine.hw.resources", "SynthesisError")):
        mod = sys.modules.get(module)
        if mod is not None:
            classes.append(getattr(mod, name))
    return tuple(classes)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}; check the path and its permissions"
    return str(exc) or type(exc).__name__


def _fail(command: str, message: str, code: int) -> int:
    print(f"{command}: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    from olivine.outputs import OutputError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    command = f"olivine {args.command}"
    try:
        if getattr(args, "takes_extra", False):
            return args.func(args, extra)
        if extra:
            raise UsageError(f"unrecognized arguments: {' '.join(extra)}; see `{command} --help`")
        return args.func(args)
    except (UsageError, OutputError) as exc:
        return _fail(command, str(exc), EXIT_USAGE)
    except KeyboardInterrupt:
        return _fail(command, "interrupted; nothing was written unless it said so", 130)
    except Exception as exc:
        if not isinstance(exc, _user_errors()):
            raise  # a bug: the traceback is what a bug report needs
        return _fail(command, _describe(exc), EXIT_FAILURE)


if __name__ == "__main__":
    sys.exit(main())
