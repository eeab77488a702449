"""Per-layer precision and sparsity configuration of the quantized LLaMA (golden/qmodel.py).

A :class:`QuantConfig` is a default :class:`LayerQuant` plus overrides keyed by glob patterns over
linear names as :meth:`olivine.golden.model.LlamaWeights.named_linears` spells them:
``"layers.3.wq"``, ``"layers.*.w_down"``, ``"lm_head"``. When several patterns match a name the
one inserted LAST wins (like later rules in a style sheet), so put general patterns first.

Besides the per-linear choices a QuantConfig carries whole-model options (PRESET_OPTIONS):
``gptq_tokens`` (calibration tokens per corpus for GPTQ's Hessians; None: all the calibration
tokens given), ``smooth_down`` (alpha of the w_down input smoothing s = rms(x)**alpha folded
into w_up's rows; 0: none), ``smooth_norm`` (alpha of the q/k/v and gate/up input smoothing
folded into the RMSNorm gammas; 0: none), ``smooth_o`` (alpha of wo's input smoothing folded
into wv's rows, tied per key-value head; 0: none) and ``norm_tweak`` (tune the attn_norm /
ffn_norm gains after the weights are quantized, golden/normtweak.py; with ``norm_tweak_lr``,
``norm_tweak_tokens`` per corpus and ``norm_tweak_steps``).

Presets (``QuantConfig.preset(name)``; lm_head is the sensitive layer everywhere: its weight is the
(tied) embedding table and its output is the logits, so it stays INT8 weights x INT8 activations):

=================  ====================================================================
fp32               everything float (reproduces FloatLlama exactly)
w8a8               INT8 weights (per-channel) x INT8 activations (per-token dynamic, docs/contract.md)
w4a8-int4          plain INT4 weights (per-channel absmax) x INT8 acts; lm_head W8A8
w4a8-ovp           OVP4 weights (per-row alpha search) x INT8 acts; lm_head W8A8
w4a8-ovp-down8     w4a8-ovp with every w_down at W8A8 (the most sensitive linear: its input
                   carries the largest activation outliers; SmolLM2 ppl ratio 1.56 -> 1.34)
w4a4-ovp           OVP4 weights x OVP4 activations (static per-tensor alpha from calibration,
                   as in OliVe); lm_head W8A8. Needs calibration tokens.
w4a8-ovp-8:16      w4a8-ovp with 8:16 block sparsity on every decoder linear; lm_head dense
w4a8-ovp-4:16      w4a8-ovp with 4:16 block sparsity on every decoder linear; lm_head dense
w4a8-ovp-gptq      w4a8-ovp with the OVP4 grid values chosen by GPTQ (golden/gptq.py: second-order
                   error compensation, OVP pairs as the unit) instead of round-to-nearest; same
                   integer format and per-row scales. Needs calibration tokens.
w4a8-int4-gptq     w4a8-int4 with GPTQ-chosen INT4 values (the equal-bits comparison).
                   Needs calibration tokens.
w4a8-ovp-g128      w4a8-ovp with a 4-bit multiplier (m/8, m = 1..15) per 128 weights along K
                   on the row scale (docs/contract.md 2a: per-group partial sums x m);
                   +4 bits per 128 weights
w4a8-ovp-gptq-g128 w4a8-ovp-g128 with GPTQ-chosen grid values. Needs calibration tokens.
w4a8-int4-g128     w4a8-int4 with the same group multipliers (equal-bits comparison)
w4a8-int4-gptq-g128  w4a8-int4-gptq with the same group multipliers. Needs calibration tokens.
w4a8-ovp-gptqseq-g128  w4a8-ovp-gptq-g128 with sequential GPTQ: layer by layer, each linear's
                   Hessian from the INT8 inputs the already-quantized model feeds it
                   (golden.gptq.quantize_linears_sequential). Needs calibration tokens.
w4a8-int4-gptqseq-g128  the same on plain INT4 (equal-bits comparison). Needs calibration tokens.
w4a8-ovp-gptq-g128-rtndown  w4a8-ovp-gptq-g128 with every w_down rounded to nearest (same grid and
                   group multipliers): GPTQ on 2 x 1,024 calibration tokens overfits w_down's
                   outlier-channel inputs (SmolLM2 float path, N = 1,024: Lee 1.36x -> 1.32x,
                   Shakespeare 1.26x -> 1.24x; docs/benchmarks.md). Needs calibration tokens.
w4a8-int4-gptq-g128-rtndown  the same on plain INT4 (equal-bits comparison). Needs calibration tokens.
w4a8-ovp-gptq-g128-cal4k-smooth  w4a8-ovp-gptq-g128 (GPTQ on every linear, w_down included) with
                   GPTQ's Hessians from 4,096 calibration tokens per corpus (static scales keep
                   golden.data.CALIBRATION_TOKENS) and w_down's input channels smoothed: w_up's
                   row j x 1/s_j, w_down's column j x s_j, s = rms(x)**0.5 of the calibration
                   inputs (exact in float; weights only, same contract). SmolLM2 integer model,
                   N = 1,024: Lee 1.27x, Shakespeare 1.18x fp32 (docs/benchmarks.md). Needs
                   calibration tokens.
w4a8-int4-gptq-g128-cal4k-smooth  the same on plain INT4 (equal-bits comparison). Needs calibration tokens.
w4a8-ovp-gptq-g128-cal4k-nsmooth  w4a8-ovp-gptq-g128-cal4k-smooth with the RMSNorm outputs smoothed
                   too: each attn_norm / ffn_norm gamma_j / s_j and column j of the linears it
                   feeds (wq/wk/wv, w_gate/w_up) x s_j, s = rms(h)**0.5 of the norm output on the
                   GPTQ calibration tokens (golden.gptq.fold_norm_scales; exact in float, same
                   contract: the integer model, compiler and RTL take the folded gammas).
                   SmolLM2's integer model: Lee 1.137x, Shakespeare 1.087x fp32
                   (docs/benchmarks.md). Needs calibration tokens.
w4a8-int4-gptq-g128-cal4k-nsmooth  the same on plain INT4 (equal-bits comparison; SmolLM2: Lee 1.331x,
                   Shakespeare 1.203x). Needs calibration tokens.
w4a8-ovp-gptq-g128-cal4k-nsmooth-vo  w4a8-ovp-gptq-g128-cal4k-nsmooth with wo's input smoothed too:
                   wv's row (kv, d) x 1/s and wo's column (h, d) x s for every query head h of kv
                   head kv, s = rms^0.5 of wo's calibration input tied over those heads
                   (golden.gptq.head_tied_smoothing_scales; exact in float since each head's
                   attention output is a convex combination of v rows; weights only, same
                   contract). Measured, not better: SmolLM2's integer model Lee 1.155x,
                   Shakespeare 1.096x against -nsmooth's 1.137x / 1.087x (docs/benchmarks.md).
                   Needs calibration tokens.
w4a8-ovp-gptq-g128-cal4k-nsmooth-nt  w4a8-ovp-gptq-g128-cal4k-nsmooth with norm tweaking after GPTQ
                   (golden/normtweak.py, QuantConfig.norm_tweak): each layer's attn_norm / ffn_norm
                   gains tuned by Adam (20 steps, lr 3e-3, straight-through quantizers) so the
                   quantized layer matches the float layer on the first 512 GPTQ calibration tokens
                   per corpus, layer by layer on the integer model's own outputs; the gains stay on
                   the GAMMA_FRAC grid (same contract). SmolLM2's integer model: Lee 1.146x,
                   Shakespeare 1.086x, no gain over -nsmooth (docs/benchmarks.md). Needs calibration tokens.
w4a8-int4-gptq-g128-cal4k-nsmooth-nt  the same on plain INT4 (equal-bits comparison; SmolLM2:
                   not yet measured). Needs calibration tokens.
w4a4-ovp-nsmooth   w4a4-ovp (round to nearest) with the RMSNorm outputs and w_down's input
                   smoothed as in -cal4k-nsmooth (alpha 0.5, Hessians on the calibration tokens);
                   each OVP4 activation alpha is calibrated on the smoothed inputs the integer
                   model sees. No group multipliers (the OVP array has no group scaler).
                   SmolLM2's integer model, N = 1,024: Lee 3.10x, Shakespeare 2.80x fp32
                   (docs/benchmarks.md). Needs calibration tokens.
w4a4-ovp-gptq-cal4k-nsmooth  w4a4-ovp-nsmooth with GPTQ-chosen OVP4 weights (per-row scales) on
                   4,096 calibration tokens per corpus (static alphas keep the first
                   golden.data.CALIBRATION_TOKENS). Not yet measured on SmolLM2. Needs calibration tokens.
=================  ====================================================================
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

__all__ = ["QuantConfigError", "LayerQuant", "QuantConfig", "PRESETS", "WEIGHT_CHOICES", "ACT_CHOICES",
           "SPARSITY_CHOICES", "METHOD_CHOICES", "GPTQ_METHODS", "NAME_PATTERN", "PRESET_OPTIONS"]

WEIGHT_CHOICES = ("ovp4", "int4", "int8", "fp32")
ACT_CHOICES = ("int8", "int8-pow2", "int8-static", "ovp4", "fp32")
SPARSITY_CHOICES = (None, "8:16", "4:16", "2:16", "2:4")
#: group sizes of the per-group weight multipliers (golden.contract.GROUP_SIZES)
GROUP_CHOICES = (64, 128)
#: how grid values are chosen: "rtn" round-to-nearest, "gptq" second-order error compensation on
#: the float model's inputs, "gptq-seq" the same calibrated layer by layer on the inputs the
#: already-quantized layers produce (golden.gptq.quantize_linears_sequential)
METHOD_CHOICES = ("rtn", "gptq", "gptq-seq")
#: the methods that need calibration tokens and dense ovp4/int4 weights
GPTQ_METHODS = ("gptq", "gptq-seq")

#: Every linear name a pattern may target (after glob expansion): layers.<i>.<linear> or lm_head.
_LINEARS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
NAME_PATTERN = re.compile(r"^(layers\.[0-9*?\[\]!-]+\.[a-z_*?\[\]!]+|lm_head|[*?]+)$")


class QuantConfigError(ValueError):
    """An unknown preset, precision, sparsity or layer pattern."""


@dataclass(frozen=True)
class LayerQuant:
    """Precision and sparsity of one linear.

    weights:  "ovp4" | "int4" | "int8" | "fp32"
    acts:     "int8" (per-token dynamic, 9-bit-mantissa scale, the default) | "int8-pow2"
              (per-token dynamic, power-of-two scale) | "int8-static" (per-tensor, calibrated)
              | "ovp4" (per-tensor static alpha, calibrated) | "fp32"
    sparsity: None | "8:16" | "4:16" | "2:16" | "2:4" | a density in (0, 1] (N chosen per
              16x16 block by golden.sparsity.choose_block_n)
    method:   "rtn" (round to nearest) | "gptq" (golden/gptq.py; dense ovp4/int4 weights only;
              needs calibration tokens) | "gptq-seq" (GPTQ calibrated layer by layer on the
              quantized model's own INT8 inputs; same needs)
    group:    None (one scale per output row) | 64 | 128: a 4-bit multiplier per group of that
              many weights along K on top of the row scale (docs/contract.md 2a; dense ovp4/int4)
    """

    weights: str = "int8"
    acts: str = "int8"
    sparsity: str | float | None = None
    method: str = "rtn"
    group: int | None = None

    def __post_init__(self) -> None:
        if self.weights not in WEIGHT_CHOICES:
            raise QuantConfigError(f"LayerQuant.weights={self.weights!r}; expected one of {WEIGHT_CHOICES}")
        if self.acts not in ACT_CHOICES:
            raise QuantConfigError(f"LayerQuant.acts={self.acts!r}; expected one of {ACT_CHOICES}")
        sp = self.sparsity
        if isinstance(sp, bool) or not (sp in SPARSITY_CHOICES or (isinstance(sp, float) and 0.0 < sp <= 1.0)):
            raise QuantConfigError(
                f"LayerQuant.sparsity={sp!r}; expected None, one of {SPARSITY_CHOICES[1:]} or a density float in (0, 1]")
        if sp == "2:4" and self.weights == "ovp4":
            raise QuantConfigError("2:4 sparsity is not offered with OVP4 weights (OVP pairs are formed in 16-groups); use '8:16'")
        if self.method not in METHOD_CHOICES:
            raise QuantConfigError(f"LayerQuant.method={self.method!r}; expected one of {METHOD_CHOICES}")
        if self.method in GPTQ_METHODS and (self.weights not in ("ovp4", "int4") or sp is not None):
            raise QuantConfigError(f"GPTQ is offered for dense ovp4/int4 weights only, got weights={self.weights!r} "
                                   f"sparsity={sp!r}; use method='rtn'")

        if self.group is not None and (isinstance(self.group, bool) or self.group not in GROUP_CHOICES
                                       or self.weights not in ("ovp4", "int4") or sp is not None):
            raise QuantConfigError(f"LayerQuant.group={self.group!r} with weights={self.weights!r} sparsity={sp!r}: "
                                   f"group scales take a group size in {GROUP_CHOICES} and dense ovp4/int4 weights")

    @property
    def is_float(self) -> bool:
        return self.weights == "fp32" and self.acts == "fp32"

    def describe(self) -> str:
        s = f"W{self.weights}/A{self.acts}" + (f" {self.method}" if self.method in GPTQ_METHODS else "")
        s += f" g{self.group}" if self.group is not None else ""
        return s + (f" sparse {self.sparsity}" if self.sparsity is not None else "")


_W8A8 = LayerQuant("int8", "int8")

PRESETS: dict[str, tuple[LayerQuant, dict[str, LayerQuant]]] = {
    "fp32": (LayerQuant("fp32", "fp32"), {}),
    "w8a8": (_W8A8, {"lm_head": _W8A8}),
    "w4a8-int4": (LayerQuant("int4", "int8"), {"lm_head": _W8A8}),
    "w4a8-ovp": (LayerQuant("ovp4", "int8"), {"lm_head": _W8A8}),
    "w4a8-ovp-down8": (LayerQuant("ovp4", "int8"), {"layers.*.w_down": _W8A8, "lm_head": _W8A8}),
    "w4a4-ovp": (LayerQuant("ovp4", "ovp4"), {"lm_head": _W8A8}),
    "w4a8-ovp-8:16": (LayerQuant("ovp4", "int8", "8:16"), {"lm_head": _W8A8}),
    "w4a8-ovp-4:16": (LayerQuant("ovp4", "int8", "4:16"), {"lm_head": _W8A8}),
    "w4a8-ovp-gptq": (LayerQuant("ovp4", "int8", method="gptq"), {"lm_head": _W8A8}),
    "w4a8-int4-gptq": (LayerQuant("int4", "int8", method="gptq"), {"lm_head": _W8A8}),
    "w4a8-ovp-g128": (LayerQuant("ovp4", "int8", group=128), {"lm_head": _W8A8}),
    "w4a8-ovp-gptq-g128": (LayerQuant("ovp4", "int8", method="gptq", group=128), {"lm_head": _W8A8}),
    "w4a8-int4-g128": (LayerQuant("int4", "int8", group=128), {"lm_head": _W8A8}),
    "w4a8-int4-gptq-g128": (LayerQuant("int4", "int8", method="gptq", group=128), {"lm_head": _W8A8}),
    "w4a8-ovp-gptqseq-g128": (LayerQuant("ovp4", "int8", method="gptq-seq", group=128), {"lm_head": _W8A8}),
    "w4a8-int4-gptqseq-g128": (LayerQuant("int4", "int8", method="gptq-seq", group=128), {"lm_head": _W8A8}),
    "w4a8-ovp-gptq-g128-rtndown": (LayerQuant("ovp4", "int8", method="gptq", group=128),
                                   {"layers.*.w_down": LayerQuant("ovp4", "int8", group=128), "lm_head": _W8A8}),
    "w4a8-int4-gptq-g128-rtndown": (LayerQuant("int4", "int8", method="gptq", group=128),
                                    {"layers.*.w_down": LayerQuant("int4", "int8", group=128), "lm_head": _W8A8}),
    "w4a8-ovp-gptq-g128-cal4k-smooth": (LayerQuant("ovp4", "int8", method="gptq", group=128), {"lm_head": _W8A8}),
    "w4a8-int4-gptq-g128-cal4k-smooth": (LayerQuant("int4", "int8", method="gptq", group=128), {"lm_head": _W8A8}),
    "w4a8-ovp-gptq-g128-cal4k-nsmooth": (LayerQuant("ovp4", "int8", method="gptq", group=128), {"lm_head": _W8A8}),
    "w4a8-int4-gptq-g128-cal4k-nsmooth": (LayerQuant("int4", "int8", method="gptq", group=128), {"lm_head": _W8A8}),
    "w4a8-ovp-gptq-g128-cal4k-nsmooth-vo": (LayerQuant("ovp4", "int8", method="gptq", group=128), {"lm_head": _W8A8}),
    "w4a8-ovp-gptq-g128-cal4k-nsmooth-nt": (LayerQuant("ovp4", "int8", method="gptq", group=128), {"lm_head": _W8A8}),
    "w4a8-int4-gptq-g128-cal4k-nsmooth-nt": (LayerQuant("int4", "int8", method="gptq", group=128), {"lm_head": _W8A8}),
    # W4A4 with section 1's levers that the OVP array takes (no group multipliers: compiler.spec)
    "w4a4-ovp-nsmooth": (LayerQuant("ovp4", "ovp4"), {"lm_head": _W8A8}),
    "w4a4-ovp-gptq-cal4k-nsmooth": (LayerQuant("ovp4", "ovp4", method="gptq"), {"lm_head": _W8A8}),
}

#: whole-model options of the presets that have any (QuantConfig's gptq_tokens, smooth_down, smooth_norm,
#: smooth_o, norm_tweak)
PRESET_OPTIONS: dict[str, dict] = {
    "w4a8-ovp-gptq-g128-cal4k-smooth": {"gptq_tokens": 4096, "smooth_down": 0.5},
    "w4a8-int4-gptq-g128-cal4k-smooth": {"gptq_tokens": 4096, "smooth_down": 0.5},
    "w4a8-ovp-gptq-g128-cal4k-nsmooth": {"gptq_tokens": 4096, "smooth_down": 0.5, "smooth_norm": 0.5},
    "w4a8-int4-gptq-g128-cal4k-nsmooth": {"gptq_tokens": 4096, "smooth_down": 0.5, "smooth_norm": 0.5},
    "w4a8-ovp-gptq-g128-cal4k-nsmooth-vo": {"gptq_tokens": 4096, "smooth_down": 0.5, "smooth_norm": 0.5, "smooth_o": 0.5},
    "w4a8-ovp-gptq-g128-cal4k-nsmooth-nt": {"gptq_tokens": 4096, "smooth_down": 0.5, "smooth_norm": 0.5, "norm_tweak": True},
    "w4a8-int4-gptq-g128-cal4k-nsmooth-nt": {"gptq_tokens": 4096, "smooth_down": 0.5, "smooth_norm": 0.5, "norm_tweak": True},
    "w4a4-ovp-nsmooth": {"smooth_down": 0.5, "smooth_norm": 0.5},
    "w4a4-ovp-gptq-cal4k-nsmooth": {"gptq_tokens": 4096, "smooth_down": 0.5, "smooth_norm": 0.5},
}


@dataclass
class QuantConfig:
    """Default LayerQuant plus glob-pattern overrides (last matching pattern wins), and three
    whole-model options: ``gptq_tokens``, the calibration tokens per corpus (row) GPTQ's Hessians
    use (None: every calibration token given; else the caller passes at least that many, and
    static activation scales keep the first golden.data.CALIBRATION_TOKENS), ``smooth_down``,
    alpha of the w_down input smoothing (golden.gptq.smoothing_scales; 0: none), ``smooth_norm``,
    alpha of the RMSNorm-output smoothing folded into attn_norm / ffn_norm (golden.gptq.fold_norm_scales;
    0: none), ``smooth_o``, alpha of wo's input smoothing folded into wv's rows
    (golden.gptq.head_tied_smoothing_scales; 0: none), ``norm_tweak`` (golden/normtweak.py: after
    quantization, Adam on each decoder layer's attn_norm / ffn_norm gains so the quantized layer
    matches the float one, ``norm_tweak_steps`` steps at ``norm_tweak_lr`` on the first
    ``norm_tweak_tokens`` calibration tokens per corpus of GPTQ's rows; the gains stay on the
    GAMMA_FRAC grid)."""

    default: LayerQuant = field(default_factory=LayerQuant)
    overrides: dict[str, LayerQuant] = field(default_factory=dict)
    name: str = "custom"
    gptq_tokens: int | None = None
    smooth_down: float = 0.0
    smooth_norm: float = 0.0
    smooth_o: float = 0.0
    norm_tweak: bool = False
    norm_tweak_lr: float = 3e-3
    norm_tweak_tokens: int = 512
    norm_tweak_steps: int = 20

    def __post_init__(self) -> None:
        if not isinstance(self.default, LayerQuant):
            raise QuantConfigError(f"QuantConfig.default must be a LayerQuant, got {type(self.default).__name__}")
        for pat, lq in self.overrides.items():
            if not isinstance(pat, str) or not NAME_PATTERN.match(pat):
                raise QuantConfigError(
                    f"override pattern {pat!r} is not a linear-name glob; use e.g. 'layers.3.wq', "
                    f"'layers.*.w_down' or 'lm_head' (linears: {', '.join(_LINEARS)})")
            if not isinstance(lq, LayerQuant):
                raise QuantConfigError(f"override {pat!r} must map to a LayerQuant, got {type(lq).__name__}")
        g = self.gptq_tokens
        if g is not None and (isinstance(g, bool) or not isinstance(g, int) or g < 16):
            raise QuantConfigError(f"QuantConfig.gptq_tokens={g!r}; expected None or a token count >= 16 per corpus")
        for option in ("smooth_down", "smooth_norm", "smooth_o"):
            a = getattr(self, option)
            if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0.0 <= a <= 1.0:
                raise QuantConfigError(f"QuantConfig.{option}={a!r}; expected an exponent alpha in [0, 1] (0: no smoothing)")
        if not isinstance(self.norm_tweak, bool):
            raise QuantConfigError(f"QuantConfig.norm_tweak={self.norm_tweak!r}; expected True or False")
        lr = self.norm_tweak_lr
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0.0 < lr <= 1.0:
            raise QuantConfigError(f"QuantConfig.norm_tweak_lr={lr!r}; expected an Adam learning rate in (0, 1] (e.g. 3e-3)")
        nt = self.norm_tweak_tokens
        if isinstance(nt, bool) or not isinstance(nt, int) or nt < 16:
            raise QuantConfigError(f"QuantConfig.norm_tweak_tokens={nt!r}; expected a token count >= 16 per corpus (e.g. 512)")
        ns = self.norm_tweak_steps
        if isinstance(ns, bool) or not isinstance(ns, int) or not 1 <= ns <= 10000:
            raise QuantConfigError(f"QuantConfig.norm_tweak_steps={ns!r}; expected a step count in 1..10000 (e.g. 20)")
        if self.norm_tweak and self.is_float:
            raise QuantConfigError("QuantConfig.norm_tweak on an all-fp32 configuration: nothing is quantized, so there "
                                   "is nothing to match; use a quantized preset or norm_tweak=False")

    @classmethod
    def preset(cls, name: str) -> "QuantConfig":
        """One of PRESETS by name (see the module docstring)."""
        if name not in PRESETS:
            raise QuantConfigError(f"unknown quantization preset {name!r}; expected one of {tuple(PRESETS)}")
        default, overrides = PRESETS[name]
        return cls(default, dict(overrides), name=name, **PRESET_OPTIONS.get(name, {}))

    def with_overrides(self, overrides: dict[str, LayerQuant]) -> "QuantConfig":
        """A copy with more overrides appended (they win over the existing ones)."""
        merged = dict(self.overrides)
        for k, v in overrides.items():
            merged.pop(k, None)
            merged[k] = v
        return QuantConfig(self.default, merged, name=f"{self.name}+{len(overrides)}",
                           gptq_tokens=self.gptq_tokens, smooth_down=self.smooth_down, smooth_norm=self.smooth_norm,
                           smooth_o=self.smooth_o, norm_tweak=self.norm_tweak, norm_tweak_lr=self.norm_tweak_lr,
                           norm_tweak_tokens=self.norm_tweak_tokens, norm_tweak_steps=self.norm_tweak_steps)

    def for_layer(self, name: str) -> LayerQuant:
        """The LayerQuant of linear ``name`` (last matching override, else the default)."""
        chosen = self.default
        for pat, lq in self.overrides.items():
            if fnmatch.fnmatchcase(name, pat):
                chosen = lq
        return chosen

    def resolve(self, names) -> dict[str, LayerQuant]:
        """LayerQuant for every name; raises if an override pattern matches none of them
        (a typo such as 'layers.*.w_dwn' would otherwise be silently ignored)."""
        names = list(names)
        for pat in self.overrides:
            if not any(fnmatch.fnmatchcase(n, pat) for n in names):
                raise QuantConfigError(
                    f"override pattern {pat!r} matches no linear of this model; names look like "
                    f"{names[0]!r} ... {names[-1]!r}")
        return {n: self.for_layer(n) for n in names}

    @property
    def is_float(self) -> bool:
        return self.default.is_float and all(lq.is_float for lq in self.overrides.values())

    def needs_calibration(self) -> bool:
        return self.norm_tweak or self.smooth_down > 0 or self.smooth_norm > 0 or self.smooth_o > 0 or any(
            lq.acts in ("ovp4", "int8-static") or lq.method in GPTQ_METHODS for lq in [self.default, *self.overrides.values()])

    def calibration_length(self, default: int) -> int:
        """Calibration tokens per corpus this configuration needs when static scales take ``default``."""
        return max(default, self.gptq_tokens or 0, self.norm_tweak_tokens if self.norm_tweak else 0)

    def describe_options(self) -> str:
        """The whole-model options as text ("" when there are none)."""
        parts = ([f"GPTQ on {self.gptq_tokens} calibration tokens per corpus"] if self.gptq_tokens else []) + \
                ([f"w_down input smoothed by rms^{self.smooth_down:g}"] if self.smooth_down else []) + \
                ([f"q/k/v and gate/up inputs smoothed by rms^{self.smooth_norm:g} (1/s in the RMSNorm gammas)"]
                 if self.smooth_norm else []) + \
                ([f"wo input smoothed by rms^{self.smooth_o:g} (1/s in wv's rows, tied per key-value head)"]
                 if self.smooth_o else []) + \
                ([f"RMSNorm gains tweaked ({self.norm_tweak_steps} Adam steps, lr {self.norm_tweak_lr:g}, "
                  f"{self.norm_tweak_tokens} calibration tokens per corpus)"] if self.norm_tweak else [])
        return "; ".join(parts)
