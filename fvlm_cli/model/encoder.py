"""DINOv2 with a deep foveated query: one visual token per frame.

DINOv2 runs once over CLS + patch tokens; at every layer the keys and values of that layer's
pre-norm input are kept. A query then walks the same layers attending to the cached K/V (patches
never attend to the query, so one patch pass serves every query: coarse, fine, and each
autoregressive step).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


def attention_parts(layer: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear, nn.Linear]:
    """(q, k, v, out) linears of a Dinov2Layer under transformers 5.x or 4.x naming."""
    attn = layer.attention
    if hasattr(attn, "q_proj"):  # transformers 5.x
        return attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
    return attn.attention.query, attn.attention.key, attn.attention.value, attn.output.dense  # 4.x


@dataclass
class FrameCache:
    """Per-layer keys/values of N frames: each K, V is [N, H, 1+P, d].

    slots: the rows are every frame slot of a [B, T] batch (row b*T + t, padded slots included), as the training
    forward encodes them (static shapes); otherwise the rows are the real frames only (`encode_frames`)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    slots: bool = False
    finish: Callable[[], torch.Tensor] | None = field(default=None, repr=False)  # computes `features` on demand

    @property
    def features(self) -> torch.Tensor | None:
        """[N, 1+P, D] DINOv2's final normed output: the last layer's patch attention + MLP, run only when asked
        (the query reads the K/V alone)."""
        return None if self.finish is None else self.finish()

    @property
    def num_frames(self) -> int:
        return self.keys[0].shape[0]

    def select(self, index: torch.Tensor) -> "FrameCache":
        return FrameCache([k[index] for k in self.keys], [v[index] for v in self.values], slots=False)

    def per_slot(self, B: int, T: int) -> list["FrameCache"]:
        """A slots cache split by frame slot: item t holds rows b*T + t of every sample. One transpose copy and one
        unbind, so backward gathers the T gradients with one stack (slicing per step would allocate a full-size
        gradient per slot and layer: O(T^2))."""
        split = lambda x: x.unflatten(0, (B, T)).transpose(0, 1).contiguous().unbind(0)
        ks, vs = [split(k) for k in self.keys], [split(v) for v in self.values]
        return [FrameCache([k[t] for k in ks], [v[t] for v in vs], slots=True) for t in range(T)]

    def repeat(self, k: int) -> "FrameCache":
        """The rows k times over (row i*N + r is row r): k text rows share one patch pass (DPO pairs)."""
        rep = lambda x: x.repeat(k, *([1] * (x.dim() - 1)))
        return FrameCache([rep(x) for x in self.keys], [rep(x) for x in self.values], slots=self.slots)


class FoveatedEncoder(nn.Module):
    def __init__(self, dino: nn.Module, query_dim: int):
        super().__init__()
        self.dino = dino
        cfg = dino.config
        self.dim = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.head_dim = self.dim // self.heads
        # No bias: a bias dominates small queries, every query then gives the same token (fine == coarse).
        self.query_input_proj = nn.Linear(query_dim, self.dim, bias=False)
        self.output_proj = nn.Linear(self.dim, self.dim)
        # Random-init DINO only (the tiny preset): HF draws the patch projection and the position embeddings with
        # the same std, so a patch's content (a sum over 3*p*p pixels) outweighs its position ~sqrt(3*p*p) times and
        # the query token barely says where the object is. `position_init_scale` rescales the fresh position table.
        # Weights loaded afterwards (a checkpoint, pretrained DINO) replace this; pretrained configs lack the key.
        scale = getattr(cfg, "position_init_scale", None)
        if scale:
            with torch.no_grad():
                dino.embeddings.position_embeddings.mul_(float(scale))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """[N, S, D] -> [N, H, S, d]"""
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

    def encode(self, pixels: torch.Tensor) -> FrameCache:
        """pixels: [N, 3, H, W] ImageNet-normalised -> FrameCache of every layer's K/V.

        The patch pass is DINOv2's own forward written out, so K/V are computed once and reused
        for the patches' self-attention (checked against Dinov2Model in the tests). It stops after the last
        layer's K/V: that layer's patch attention and MLP and the final norm feed nothing the query reads, so
        they run only if `cache.features` is asked for.
        """
        h = self.dino.embeddings(pixels)  # [N, 1+P, D]
        keys, values = [], []
        layers = self.dino.encoder.layer
        for i, layer in enumerate(layers):
            q_lin, k_lin, v_lin, o_lin = attention_parts(layer)
            x = layer.norm1(h)
            k, v = self._split(k_lin(x)), self._split(v_lin(x))
            keys.append(k)
            values.append(v)
            if i == len(layers) - 1:
                break
            h = self._finish_layer(layer, h, x, k, v)
        last = layers[len(layers) - 1]
        finish = lambda: self.dino.layernorm(self._finish_layer(last, h, x, k, v))  # noqa: E731 (bound to this pass)
        return FrameCache(keys, values, finish=finish)

    def _finish_layer(self, layer, h, x, k, v) -> torch.Tensor:
        q_lin, _, _, o_lin = attention_parts(layer)
        a = F.scaled_dot_product_attention(self._split(q_lin(x)), k, v)
        h = h + layer.layer_scale1(o_lin(a.transpose(1, 2).flatten(2)))
        return h + layer.layer_scale2(layer.mlp(layer.norm2(h)))

    def query(self, q: torch.Tensor, cache: FrameCache, return_attention: bool = False):
        """q: [N, query_dim], one query per cached frame -> z: [N, D] (and per-layer attention [L, N, H, 1+P])."""
        x = self.query_input_proj(q).unsqueeze(1)  # [N, 1, D]
        maps = []
        for layer, k, v in zip(self.dino.encoder.layer, cache.keys, cache.values):
            q_lin, _, _, o_lin = attention_parts(layer)
            qh = self._split(q_lin(layer.norm1(x)))  # [N, H, 1, d]
            if return_attention:
                w = torch.softmax((qh @ k.transpose(-1, -2)) * self.head_dim**-0.5, dim=-1)
                maps.append(w[:, :, 0])
                a = w @ v
            else:
                a = F.scaled_dot_product_attention(qh, k, v)
            x = x + layer.layer_scale1(o_lin(a.transpose(1, 2).flatten(2)))
            x = x + layer.layer_scale2(layer.mlp(layer.norm2(x)))
        z = self.output_proj(self.dino.layernorm(x)).squeeze(1)
        if return_attention:
            return z, torch.stack(maps)
        return z

    def patch_grid(self, image_size: int) -> int:
        return image_size // self.dino.config.patch_size
