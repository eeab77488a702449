"""Float32 LLaMA reference: the model every quantized, compiled and simulated path is judged against.

Conventions (Hugging Face ``LlamaForCausalLM``):

* Linear weights use the ``torch.nn.Linear`` layout ``[out_features, in_features]``; a linear is
  ``y = x @ W.T``. No biases anywhere.
* RoPE rotates the pairs ``(i, i + head_dim/2)`` of each head ("rotate half") with angle
  ``pos * rope_theta ** (-2i / head_dim)``. Models whose checkpoints rotate interleaved pairs
  ``(2i, 2i+1)`` are converted by the loaders (a per-head row permutation of ``wq`` and ``wk``).
* Grouped-query attention: query head ``h`` reads key/value head ``h // (n_heads // n_kv_heads)``.

Data flow of one forward pass (``x`` is the residual stream, ``[B, T, dim]``)::

    x = embed[tokens]                                         # embedding lookup
    for layer i:
        h = rms_norm(x, attn_norm)        -> feeds wq, wk, wv  (the three attention inputs)
        q = rope(h @ wq.T)   [B, Hq,  T, hd]
        k = rope(h @ wk.T)   [B, Hkv, T, hd]   -> appended to the KV cache (post-RoPE)
        v =      h @ wv.T    [B, Hkv, T, hd]   -> appended to the KV cache
        a = softmax(q k^T / sqrt(hd) + causal_mask) v, heads concatenated [B, T, Hq*hd]
                                          -> feeds wo
        x = x + a @ wo.T                                      # attention residual
        h = rms_norm(x, ffn_norm)         -> feeds w_gate, w_up
        g = silu(h @ w_gate.T) * (h @ w_up.T)   [B, T, ffn_dim]
                                          -> feeds w_down
        x = x + g @ w_down.T                                  # FFN residual
    logits = rms_norm(x, final_norm) @ lm_head.T              # [B, T, vocab]

Reuse by a quantized variant: :class:`FloatLlama` routes every step through an overridable method
(``embed``, ``norm``, ``linear``, ``rope``, ``attention_core``, ``ffn_activation``,
``attn_block``, ``ffn_block``, ``logits_head``). A subclass that overrides only ``linear`` (for
example with fake-quantized weights and activations) keeps everything else bit-for-bit identical.
The linear names passed to ``linear`` are those of :meth:`LlamaWeights.named_linears`
(``"layers.3.wq"`` ... ``"lm_head"``).

Forward protocol (shared with the quantized model and used by :mod:`olivine.golden.accuracy`):
``forward(tokens[T] or [B, T], cache=None, start_pos=0) -> float32 logits [T, V] or [B, T, V]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Iterator, Protocol, runtime_checkable

import torch

__all__ = [
    "LINEAR_NAMES",
    "ModelConfigError",
    "LlamaConfig",
    "LayerWeights",
    "LlamaWeights",
    "KVCache",
    "FloatLlama",
    "ForwardModel",
    "rms_norm",
    "rope_tables",
    "apply_rope",
    "causal_attention",
    "interleaved_to_rotate_half",
]

#: Names of the seven linears of one decoder layer, in data-flow order.
LINEAR_NAMES = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


class ModelConfigError(ValueError):
    """A configuration or weight set that does not describe a valid LLaMA model."""


@dataclass
class LlamaConfig:
    """Architecture hyperparameters of a LLaMA-family decoder."""

    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 2048
    tie_embeddings: bool = True
    name: str = "llama"
    #: LLaMA-3 RoPE scaling (factor, low_freq_factor, high_freq_factor, original_max_position_embeddings)
    rope_scaling: tuple | None = None

    def __post_init__(self) -> None:
        for key in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                    "ffn_dim", "max_seq_len"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ModelConfigError(f"LlamaConfig.{key} must be a positive integer, got {value!r}")
        if self.n_heads % self.n_kv_heads:
            raise ModelConfigError(
                f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}; "
                "grouped-query attention needs an integer number of query heads per KV head")
        if self.head_dim % 2:
            raise ModelConfigError(f"head_dim={self.head_dim} must be even for RoPE")
        if not self.norm_eps >= 0 or not self.rope_theta > 0:
            raise ModelConfigError("norm_eps must be >= 0 and rope_theta > 0")
        from .sfu import check_rope_scaling

        try:
            self.rope_scaling = check_rope_scaling(self.rope_scaling)
        except ValueError as err:
            raise ModelConfigError(f"LlamaConfig.rope_scaling: {err}") from None

    @property
    def q_dim(self) -> int:
        """Width of the concatenated query heads (rows of wq, columns of wo)."""
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of the concatenated key (or value) heads (rows of wk and wv)."""
        return self.n_kv_heads * self.head_dim

    @property
    def n_rep(self) -> int:
        """Query heads sharing one key/value head."""
        return self.n_heads // self.n_kv_heads

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """``[out, in]`` shape of each per-layer linear, by short name."""
        d, f = self.dim, self.ffn_dim
        return {"wq": (self.q_dim, d), "wk": (self.kv_dim, d), "wv": (self.kv_dim, d),
                "wo": (d, self.q_dim), "w_gate": (f, d), "w_up": (f, d), "w_down": (d, f)}

    def n_params(self) -> int:
        """Parameter count (tied embeddings counted once)."""
        per_layer = sum(o * i for o, i in self.linear_shapes().values()) + 2 * self.dim
        head = 0 if self.tie_embeddings else self.vocab_size * self.dim
        return self.vocab_size * self.dim + self.n_layers * per_layer + self.dim + head


@dataclass
class LayerWeights:
    """One decoder layer's float32 weights (``[out, in]`` linears, ``[dim]`` norm gains)."""

    attn_norm: torch.Tensor
    wq: torch.Tensor
    wk: torch.Tensor
    wv: torch.Tensor
    wo: torch.Tensor
    ffn_norm: torch.Tensor
    w_gate: torch.Tensor
    w_up: torch.Tensor
    w_down: torch.Tensor


@dataclass
class LlamaWeights:
    """All float32 weights of a model. With tied embeddings ``lm_head`` is ``embed`` (same tensor)."""

    embed: torch.Tensor
    layers: list[LayerWeights]
    final_norm: torch.Tensor
    lm_head: torch.Tensor

    def named_linears(self, include_lm_head: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``("layers.<i>.<name>", weight[out, in])`` for every decoder linear, in data-flow
        order; then ``("lm_head", ...)`` if asked (the head is usually kept at higher precision)."""
        for i, layer in enumerate(self.layers):
            for name in LINEAR_NAMES:
                yield f"layers.{i}.{name}", getattr(layer, name)
        if include_lm_head:
            yield "lm_head", self.lm_head

    def linear(self, name: str) -> torch.Tensor:
        """Weight of the linear called ``name`` (as produced by :meth:`named_linears`)."""
        if name == "lm_head":
            return self.lm_head
        parts = name.split(".")
        if len(parts) != 3 or parts[0] != "layers" or parts[2] not in LINEAR_NAMES or not parts[1].isdigit():
            raise KeyError(f"unknown linear name {name!r}; expected 'layers.<i>.<{'|'.join(LINEAR_NAMES)}>' "
                           "or 'lm_head'")
        index = int(parts[1])
        if index >= len(self.layers):
            raise KeyError(f"linear {name!r}: the model has only {len(self.layers)} layers")
        return getattr(self.layers[index], parts[2])

    def validate(self, config: LlamaConfig) -> None:
        """Raise :class:`ModelConfigError` unless every tensor is float32 with the shape ``config`` needs."""

        def check(name: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> None:
            if not isinstance(tensor, torch.Tensor):
                raise ModelConfigError(f"weight {name} is a {type(tensor).__name__}, expected a torch.Tensor")
            if tuple(tensor.shape) != tuple(shape):
                raise ModelConfigError(f"weight {name} has shape {tuple(tensor.shape)}, expected {shape} "
                                       f"for config {config.name!r}")
            if tensor.dtype != torch.float32:
                raise ModelConfigError(f"weight {name} is {tensor.dtype}; convert it to torch.float32")

        if len(self.layers) != config.n_layers:
            raise ModelConfigError(f"{len(self.layers)} layers of weights for a config with "
                                   f"n_layers={config.n_layers}")
        check("embed", self.embed, (config.vocab_size, config.dim))
        check("final_norm", self.final_norm, (config.dim,))
        check("lm_head", self.lm_head, (config.vocab_size, config.dim))
        shapes = config.linear_shapes()
        for i, layer in enumerate(self.layers):
            check(f"layers.{i}.attn_norm", layer.attn_norm, (config.dim,))
            check(f"layers.{i}.ffn_norm", layer.ffn_norm, (config.dim,))
            for name in LINEAR_NAMES:
                check(f"layers.{i}.{name}", getattr(layer, name), shapes[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat name -> tensor mapping (norms included), handy for saving or comparing."""
        out = {"embed": self.embed, "final_norm": self.final_norm, "lm_head": self.lm_head}
        for i, layer in enumerate(self.layers):
            for f in fields(LayerWeights):
                out[f"layers.{i}.{f.name}"] = getattr(layer, f.name)
        return out


# ----------------------------------------------------------------------------------------------
# Stateless operations (shared with the integer model so both use one definition).

def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last axis, in float32."""
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * weight


def rope_tables(head_dim: int, theta: float, length: int, scaling=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables ``[length, head_dim]`` for rotate-half RoPE (both halves repeat the
    ``head_dim/2`` angles). Angles are computed in float64 and rounded once to float32.
    ``scaling``: LLaMA-3 frequency rescaling (golden.sfu.llama3_inv_freq), or None."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    if scaling is not None:
        from .sfu import llama3_inv_freq

        inv_freq = torch.from_numpy(llama3_inv_freq(inv_freq.numpy(), scaling))
    angles = torch.outer(torch.arange(length, dtype=torch.float64), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(torch.float32), angles.sin().to(torch.float32)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs ``(i, i + hd/2)`` of ``x [..., T, hd]`` by ``cos/sin [T, hd]``."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start_pos: int) -> torch.Tensor:
    """Grouped-query causal attention.

    ``q [B, Hq, T, hd]`` holds positions ``start_pos .. start_pos+T-1``; ``k, v [B, Hkv, S, hd]``
    hold positions ``0 .. S-1``. Returns the heads concatenated, ``[B, T, Hq*hd]``.
    """
    b, hq, t, hd = q.shape
    hkv, s = k.shape[1], k.shape[2]
    rep = hq // hkv
    qg = q.reshape(b, hkv, rep, t, hd)  # query head h -> KV head h // rep, without copying K/V
    scores = torch.matmul(qg, k.unsqueeze(2).transpose(-1, -2)) * (1.0 / math.sqrt(hd))
    query_pos = torch.arange(start_pos, start_pos + t).unsqueeze(1)
    key_pos = torch.arange(s).unsqueeze(0)
    scores = scores.masked_fill(key_pos > query_pos, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(probs, v.unsqueeze(2))  # [B, Hkv, rep, T, hd]
    return out.reshape(b, hq, t, hd).transpose(1, 2).reshape(b, t, hq * hd)


def interleaved_to_rotate_half(w: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    """Permute the rows of a Q or K projection ``[n_heads*head_dim, in]`` so that a checkpoint
    trained with interleaved RoPE pairs ``(2i, 2i+1)`` works with rotate-half pairs ``(i, i+hd/2)``.

    Within each head, new row ``i`` is old row ``2i`` and new row ``i + hd/2`` is old row ``2i+1``.
    Applying the same permutation to Q and K leaves every attention score unchanged.
    """
    if w.shape[0] != n_heads * head_dim:
        raise ModelConfigError(f"projection has {w.shape[0]} rows, expected n_heads*head_dim = "
                               f"{n_heads}*{head_dim}")
    perm_in_head = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])
    perm = (torch.arange(n_heads).unsqueeze(1) * head_dim + perm_in_head).reshape(-1)
    return w[perm].contiguous()


# ----------------------------------------------------------------------------------------------

class KVCache:
    """Post-RoPE keys and values of every layer, preallocated ``[B, Hkv, capacity, hd]``.

    ``length`` is the number of positions filled; the next forward must use ``start_pos == length``.
    """

    def __init__(self, config: LlamaConfig, batch: int = 1, capacity: int | None = None,
                 dtype: torch.dtype = torch.float32):
        capacity = config.max_seq_len if capacity is None else capacity
        if capacity <= 0 or capacity > config.max_seq_len:
            raise ValueError(f"KV cache capacity {capacity} must be in 1..max_seq_len={config.max_seq_len}")
        shape = (batch, config.n_kv_heads, capacity, config.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype) for _ in range(config.n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype) for _ in range(config.n_layers)]
        self.batch, self.capacity, self.length = batch, capacity, 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, start_pos: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k, v [B, Hkv, T, hd]`` at positions ``start_pos..``; return all keys/values so far."""
        t = k.shape[2]
        if k.shape[0] != self.batch:
            raise ValueError(f"KV cache was made for batch {self.batch}, got batch {k.shape[0]}")
        if start_pos != self.length and layer == 0:
            raise ValueError(f"KV cache holds {self.length} positions but start_pos={start_pos}; "
                             "pass start_pos=cache.length")
        end = start_pos + t
        if end > self.capacity:
            raise ValueError(f"KV cache capacity {self.capacity} exceeded (positions up to {end}); "
                             "make a larger cache or start a new sequence")
        self.k[layer][:, :, start_pos:end] = k
        self.v[layer][:, :, start_pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, n: int) -> None:
        """Record that ``n`` more positions were written to every layer."""
        self.length += n


@runtime_checkable
class ForwardModel(Protocol):
    """What accuracy measurement needs: a config and ``forward(tokens[B, T]) -> logits[B, T, V]``."""

    config: LlamaConfig

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None,
                start_pos: int = 0) -> torch.Tensor: ...


class FloatLlama:
    """The float32 reference forward pass (see the module docstring for its data flow)."""

    def __init__(self, config: LlamaConfig, weights: LlamaWeights):
        weights.validate(config)
        self.config, self.weights = config, weights
        self._cos = self._sin = torch.empty(0)

    # -- overridable steps ------------------------------------------------------------------
    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Residual stream ``[B, T, dim]`` from token ids ``[B, T]``."""
        return self.weights.embed[tokens]

    def norm(self, name: str, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """RMSNorm; ``name`` is ``"layers.<i>.attn_norm"``, ``"layers.<i>.ffn_norm"`` or ``"final_norm"``."""
        return rms_norm(x, weight, self.config.norm_eps)

    def linear(self, name: str, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``x @ weight.T`` for the linear called ``name`` (``"layers.<i>.wq"`` ... ``"lm_head"``)."""
        return torch.matmul(x, weight.t())

    def rope(self, x: torch.Tensor, start_pos: int) -> torch.Tensor:
        """Apply RoPE to ``x [B, H, T, hd]`` holding positions ``start_pos..``."""
        cos, sin = self.rope_cos_sin(start_pos, x.shape[2])
        return apply_rope(x, cos, sin)

    def attention_core(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       start_pos: int) -> torch.Tensor:
        """``softmax(q k^T / sqrt(hd) + mask) v`` -> ``[B, T, Hq*hd]`` (the input of wo)."""
        return causal_attention(q, k, v, start_pos)

    def ffn_activation(self, layer: int, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """SwiGLU ``silu(gate) * up`` (the input of w_down)."""
        return torch.nn.functional.silu(gate) * up

    # -- blocks -----------------------------------------------------------------------------
    def attn_block(self, layer: int, x: torch.Tensor, cache: KVCache | None, start_pos: int) -> torch.Tensor:
        """Attention sub-block: returns the residual stream after ``x + attn(norm(x))``."""
        c, w, p = self.config, self.weights.layers[layer], f"layers.{layer}."
        b, t, _ = x.shape
        h = self.norm(p + "attn_norm", x, w.attn_norm)
        q = self.linear(p + "wq", h, w.wq).view(b, t, c.n_heads, c.head_dim).transpose(1, 2)
        k = self.linear(p + "wk", h, w.wk).view(b, t, c.n_kv_heads, c.head_dim).transpose(1, 2)
        v = self.linear(p + "wv", h, w.wv).view(b, t, c.n_kv_heads, c.head_dim).transpose(1, 2)
        q, k = self.rope(q, start_pos), self.rope(k, start_pos)
        if cache is not None:
            k, v = cache.update(layer, k, v, start_pos)
        a = self.attention_core(layer, q, k, v, start_pos)
        return x + self.linear(p + "wo", a, w.wo)

    def ffn_block(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """FFN sub-block: returns the residual stream after ``x + ffn(norm(x))``."""
        w, p = self.weights.layers[layer], f"layers.{layer}."
        h = self.norm(p + "ffn_norm", x, w.ffn_norm)
        g = self.ffn_activation(layer, self.linear(p + "w_gate", h, w.w_gate),
                                self.linear(p + "w_up", h, w.w_up))
        return x + self.linear(p + "w_down", g, w.w_down)

    def logits_head(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head: ``[B, T, dim] -> [B, T, vocab]``."""
        h = self.norm("final_norm", x, self.weights.final_norm)
        return self.linear("lm_head", h, self.weights.lm_head)

    # -- public API -------------------------------------------------------------------------
    def rope_cos_sin(self, start_pos: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin rows for positions ``start_pos .. start_pos+length-1`` (tables grow on demand)."""
        end = start_pos + length
        if end > self._cos.shape[0]:
            size = min(self.config.max_seq_len, max(end, 2 * self._cos.shape[0], 256))
            self._cos, self._sin = rope_tables(self.config.head_dim, self.config.rope_theta, size,
                                               self.config.rope_scaling)
        return self._cos[start_pos:end], self._sin[start_pos:end]

    def check_tokens(self, tokens, start_pos: int = 0) -> tuple[torch.Tensor, bool]:
        """Return ``tokens`` as a ``[B, T]`` int64 tensor (and whether the input was 1-D)."""
        tokens = torch.as_tensor(tokens)
        squeeze = tokens.dim() == 1
        if squeeze:
            tokens = tokens.unsqueeze(0)
        if tokens.dim() != 2 or tokens.numel() == 0:
            raise ValueError(f"tokens must have shape [T] or [B, T] with T >= 1, got {tuple(tokens.shape)}")
        if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise TypeError(f"tokens must be integer ids, got dtype {tokens.dtype}")
        if start_pos < 0 or start_pos + tokens.shape[1] > self.config.max_seq_len:
            raise ValueError(f"positions [{start_pos}, {start_pos + tokens.shape[1]}) do not fit in "
                             f"max_seq_len={self.config.max_seq_len} of {self.config.name!r}; "
                             "use a shorter sequence or window")
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= self.config.vocab_size:
            raise ValueError(f"token ids must be in 0..{self.config.vocab_size - 1}, got range {lo}..{hi}")
        return tokens.to(torch.int64), squeeze

    @torch.no_grad()
    def forward(self, tokens, cache: KVCache | None = None, start_pos: int = 0) -> torch.Tensor:
        """Logits ``[T, V]`` for ``tokens [T]`` or ``[B, T, V]`` for ``[B, T]``, float32.

        With a ``cache``, keys/values of these positions are stored and earlier ones are attended to;
        ``start_pos`` must then equal ``cache.length``.
        """
        tokens, squeeze = self.check_tokens(tokens, start_pos)
        x = self.embed(tokens)
        for layer in range(self.config.n_layers):
            x = self.attn_block(layer, x, cache, start_pos)
            x = self.ffn_block(layer, x)
        if cache is not None:
            cache.advance(tokens.shape[1])
        logits = self.logits_head(x)
        return logits[0] if squeeze else logits

    __call__ = forward

    def new_cache(self, batch: int = 1, capacity: int | None = None) -> KVCache:
        return KVCache(self.config, batch, capacity)

    def prefill(self, tokens, capacity: int | None = None) -> tuple[torch.Tensor, KVCache]:
        """Run the prompt through a fresh KV cache; returns ``(logits, cache)``."""
        tokens, squeeze = self.check_tokens(tokens)
        cache = self.new_cache(tokens.shape[0], capacity)
        logits = self.forward(tokens, cache=cache, start_pos=0)
        return (logits[0] if squeeze else logits), cache

    def decode(self, token, cache: KVCache) -> torch.Tensor:
        """One decode step: ``token`` (int, ``[B]`` or ``[B, 1]``) at position ``cache.length``.
        Returns next-token logits ``[V]`` for an int, else ``[B, V]``."""
        scalar = isinstance(token, int) or torch.as_tensor(token).dim() == 0
        t = torch.as_tensor(token).reshape(-1, 1) if not scalar else torch.tensor([[int(token)]])
        logits = self.forward(t, cache=cache, start_pos=cache.length)[:, -1]
        return logits[0] if scalar else logits

    def generate(self, tokens, max_new_tokens: int, greedy: bool = True, temperature: float = 1.0,
                 seed: int | None = None, eos_id: int | None = None) -> list[int]:
        """Continue one prompt (``list[int]`` or ``[T]``) by up to ``max_new_tokens`` tokens (stopping
        after ``eos_id`` if given) using the KV cache. Returns only the new tokens."""
        prompt = [int(t) for t in torch.as_tensor(tokens).reshape(-1).tolist()]
        if not prompt:
            raise ValueError("the prompt is empty; give at least one token")
        if max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0")
        if not greedy and not temperature > 0:
            raise ValueError("temperature must be > 0 for sampling; use greedy=True for argmax")
        total = len(prompt) + max_new_tokens
        if total > self.config.max_seq_len:
            raise ValueError(f"prompt ({len(prompt)}) + max_new_tokens ({max_new_tokens}) exceeds "
                             f"max_seq_len={self.config.max_seq_len} of {self.config.name!r}")
        if max_new_tokens == 0:
            return []
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        logits, cache = self.prefill(prompt, capacity=total)
        logits = logits[-1]
        out: list[int] = []
        while True:
            if greedy:
                token = int(torch.argmax(logits))
            else:
                probs = torch.softmax(logits.double() / temperature, dim=-1)
                token = int(torch.multinomial(probs, 1, generator=gen))
            out.append(token)
            if len(out) == max_new_tokens or (eos_id is not None and token == eos_id):
                return out
            logits = self.decode(token, cache)
