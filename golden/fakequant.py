"""Float fake-quantized LLaMA (measurement only): dequantized weights and fake-quantized inputs
per linear, everything else (attention, norms, KV) float as in FloatLlama.

It isolates the weight/activation error of the linears and runs at float speed; the integer
model (golden/qmodel.py) adds the fixed-point SFU, attention and KV-cache quantization on top.
Used to compare weight quantizers that the integer contract cannot yet express (per-group
scales, golden/gptq.py) and to screen variants before confirming on the integer model.
"""

from __future__ import annotations

import torch

from .contract import fake_quant_act_dynamic_int8
from .model import FloatLlama, LlamaConfig, LlamaWeights

__all__ = ["FakeQuantLlama"]


class FakeQuantLlama(FloatLlama):
    """FloatLlama whose linears named in ``dequantized`` use those float weights [N, K] and
    per-token dynamic INT8 fake-quantized inputs (contract.fake_quant_act_dynamic_int8)."""

    def __init__(self, config: LlamaConfig, weights: LlamaWeights, dequantized: dict[str, torch.Tensor]):
        super().__init__(config, weights)
        for name, w in dequantized.items():
            ref = weights.linear(name)
            if tuple(w.shape) != tuple(ref.shape):
                raise ValueError(f"{name}: dequantized weight {tuple(w.shape)} != model weight {tuple(ref.shape)}")
        self.dequantized = {n: w.to(torch.float32) for n, w in dequantized.items()}

    def linear(self, name, x, weight):
        w = self.dequantized.get(name)
        if w is None:
            return super().linear(name, x, weight)
        return torch.matmul(fake_quant_act_dynamic_int8(x), w.t())
