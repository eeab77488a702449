"""On-disk cache of quantized models (golden.qmodel.quantize_model results).

``quantize_cached(loaded, qcfg, calib_tokens=None)`` returns the same QLlama as
``quantize_model(loaded.config, loaded.weights, qcfg, calib_tokens)``; the quantized linears are
kept in ``$OLIVINE_CACHE/qmodels/<model>-<preset>-<key>.qmodel`` (default ``~/.cache/olivine``, the directory
sim/rtl.py uses for its builds). The key hashes

- the model's identity: its source file or directory (resolved path, size and mtime of every
  file) or, for models that do not come from a file (glassllm), a hash of the weights; plus
  the config;
- the precision configuration (the QuantConfig, overrides included) and the calibration tokens;
- the code version: a hash of golden's quantization sources (this file, contract, fixed, gptq,
  model, normtweak, ovp, ovp_format, qconfig, qmodel, sfu, sparsity) and the torch version.

Entries are written atomically (temporary file + rename) with a SHA-256 of their payload; an
entry that is truncated, corrupt or made for another key is reported, deleted and rebuilt,
never trusted. Writing an entry removes older entries of the same model and preset (other code
versions or files), so the cache holds one per pair. ``OLIVINE_NO_CACHE=1`` bypasses the cache
(nothing read or written).
The float weights are not stored (the loaded model provides them; the smoothing options' scales
are: QuantConfig.smooth_norm's, whose fold into the gammas is redone on load, and the linears'
re-parametrizations of smooth_down / smooth_o, golden.gptq.rescale_linears, redone for the
QLinears' float weights ``w_float``; QuantConfig.norm_tweak's gains, put back into the folded
weights) and the decoded OVP operands
are recomputed from the codes, so an entry is about 2.5 bytes per quantized weight.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import warnings
from pathlib import Path

import torch

__all__ = ["cache_root", "cache_key", "quantize_cached", "model_identity", "code_version", "CacheWarning"]

_MAGIC = b"OLIVINE-QMODEL 1\n"
_SOURCES = ("qcache.py", "contract.py", "fixed.py", "gptq.py", "model.py", "normtweak.py", "ovp.py", "ovp_format.py",
            "qconfig.py", "qmodel.py", "sfu.py", "sparsity.py")


class CacheWarning(UserWarning):
    """A cache entry could not be used (corrupt or unreadable) and was rebuilt."""


def cache_root() -> Path:
    """``$OLIVINE_CACHE`` or ``~/.cache/olivine`` (the rule of olivine.sim.rtl)."""
    return Path(os.environ.get("OLIVINE_CACHE") or Path.home() / ".cache" / "olivine")


def _enabled() -> bool:
    return os.environ.get("OLIVINE_NO_CACHE", "") in ("", "0")


def code_version() -> str:
    """SHA-256 of golden's quantization sources and the torch version."""
    h = hashlib.sha256(torch.__version__.encode())
    here = Path(__file__).parent
    for name in _SOURCES:
        h.update(name.encode())
        h.update((here / name).read_bytes())
    return h.hexdigest()


def _file_stats(path: Path) -> list:
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def model_identity(loaded) -> dict:
    """What identifies the model's weights: its source files (path, size, mtime) or a weight hash."""
    ident: dict = {"config": repr(loaded.config), "source": loaded.source}
    src = Path(loaded.source) if loaded.source else None
    if src is not None and src.exists():
        ident["files"] = _file_stats(src)
    else:
        h = hashlib.sha256()
        for name, t in loaded.weights.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().contiguous().cpu().numpy().tobytes())
        ident["weights_sha256"] = h.hexdigest()
    return ident


def cache_key(loaded, qcfg, calib_tokens=None) -> str:
    """Hex key of (model identity, precision configuration, calibration tokens, code version)."""
    calib = None
    if calib_tokens is not None:
        calib = hashlib.sha256(torch.as_tensor(calib_tokens).to(torch.int64).numpy().tobytes()).hexdigest()
    blob = json.dumps({"model": model_identity(loaded), "qcfg": repr(qcfg), "calib": calib, "code": code_version()},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)[:80]


def _strip(linears: dict, embed_q) -> tuple[dict, object]:
    """Copies of the compiled linears without what the loaded model or the codes give back."""
    from dataclasses import replace

    out, memo = {}, {}

    def strip_weight(w):
        if w is None or id(w) in memo:
            return memo.get(id(w)) if w is not None else None
        lean = replace(w, exponent=None, integer=None) if (w.kind in ("int8", "int4") or w.codes is not None) else w
        memo[id(w)] = lean
        return lean

    for name, lin in linears.items():
        # w_float is the padded float weight when the layer is quantized (restored from the
        # loaded model); fp32 layers keep theirs (it may be a pruned copy)
        out[name] = replace(lin, weight=strip_weight(lin.weight), _w_cache=None,
                            w_float=None if lin.weight is not None else lin.w_float)
    return out, strip_weight(embed_q)


def _restore(lean: dict, lean_embed, weights, col_scales=None, row_scales=None) -> tuple[dict, object]:
    from dataclasses import replace

    from . import gptq, ovp
    from .contract import padded_weight

    memo = {}

    def restore_weight(w):
        if w is None or w.exponent is not None:
            return w
        if id(w) not in memo:
            if w.kind == "ovp4":
                e, i = ovp.decode(w.codes, w.normal, bits=4)
                memo[id(w)] = replace(w, exponent=e.to(torch.int8), integer=i.to(torch.int8))
            else:
                memo[id(w)] = replace(w, exponent=torch.zeros_like(w.values, dtype=torch.int8), integer=w.values.to(torch.int8))
        return memo[id(w)]

    # the smoothing options' re-parametrized float weights, as quantize_model built them
    rescaled = gptq.rescale_linears(weights, col_scales or {}, row_scales or {})
    linears = {}
    for name, lin in lean.items():
        w_float = lin.w_float
        if w_float is None:
            w = lin.weight
            w_float = padded_weight(rescaled.get(name, weights.linear(name)), w.kind, lin.act, w.block_n)
        linears[name] = replace(lin, weight=restore_weight(lin.weight), w_float=w_float)
    return linears, restore_weight(lean_embed)


def _read(path: Path, key: str):
    data = path.read_bytes()
    if not data.startswith(_MAGIC):
        raise ValueError("not an olivine quantized-model entry")
    digest, payload = data[len(_MAGIC):len(_MAGIC) + 64], data[len(_MAGIC) + 65:]
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise ValueError("checksum mismatch (truncated or corrupt)")
    entry = torch.load(io.BytesIO(payload), weights_only=False)  # our own, checksummed file
    if entry.get("key") != key:
        raise ValueError("entry was written for another key")
    return entry


def _write(path: Path, entry: dict) -> None:
    buf = io.BytesIO()
    torch.save(entry, buf)
    payload = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def quantize_cached(loaded, qcfg, calib_tokens=None, progress=None):
    """``quantize_model(loaded.config, loaded.weights, qcfg, calib_tokens)``, through the cache.

    ``loaded`` is a golden.loaders.LoadedModel; ``qcfg`` a QuantConfig or preset name.
    ``progress(str)``, if given, hears whether the entry was loaded or built.
    """
    from .qconfig import QuantConfig
    from . import gptq
    from .qmodel import QLlama, quantize_model

    if isinstance(qcfg, str):
        qcfg = QuantConfig.preset(qcfg)
    say = progress or (lambda msg: None)
    if not _enabled() or qcfg.is_float:
        return quantize_model(loaded.config, loaded.weights, qcfg, calib_tokens)
    key = cache_key(loaded, qcfg, calib_tokens)
    slug = _slug(f"{loaded.config.name}-{getattr(qcfg, 'name', '') or 'custom'}")
    path = cache_root() / "qmodels" / f"{slug}-{key}.qmodel"
    if path.exists():
        try:
            entry = _read(path, key)
            # the RMSNorm smoothing's fold (QuantConfig.smooth_norm) redone on the loaded weights:
            # the gammas the integer model, the compiler and the RTL take are the folded ones
            norm_scales = entry.get("norm_scales") or {}
            weights = gptq.fold_norm_scales(loaded.weights, norm_scales) if norm_scales else loaded.weights
            # the tweaked norm gains (QuantConfig.norm_tweak) replace the folded ones
            norm_gains = entry.get("norm_gains") or {}
            if norm_gains:
                from .normtweak import apply_gains

                weights = apply_gains(weights, norm_gains)
            col_scales, row_scales = entry.get("col_scales") or {}, entry.get("row_scales") or {}
            linears, embed_q = _restore(entry["linears"], entry["embed_q"], weights, col_scales, row_scales)
            say(f"quantized model loaded from the cache ({path})")
            return QLlama(loaded.config, weights, qcfg, linears, embed_q, entry["layer_quant"], norm_scales=norm_scales,
                          col_scales=col_scales, row_scales=row_scales, norm_gains=norm_gains)
        except Exception as err:  # noqa: BLE001 - any unreadable entry is rebuilt, never trusted
            warnings.warn(f"olivine cache entry {path} is unusable ({err}); rebuilding it", CacheWarning, stacklevel=2)
            path.unlink(missing_ok=True)
    model = quantize_model(loaded.config, loaded.weights, qcfg, calib_tokens)
    lean, lean_embed = _strip(model.linears, model.embed_q)
    _write(path, {"key": key, "linears": lean, "embed_q": lean_embed, "layer_quant": model.layer_quant,
                  "norm_scales": model.norm_scales, "col_scales": model.col_scales, "row_scales": model.row_scales,
                  "norm_gains": model.norm_gains})
    # one entry per model and preset: older ones (other code versions, changed files) go
    for stale in path.parent.glob(f"{slug}-{'?' * len(key)}.qmodel"):  # exactly this slug
        if stale != path:
            stale.unlink(missing_ok=True)
    say(f"quantized model stored in the cache ({path})")
    return model
