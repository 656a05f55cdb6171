"""Cross-attention processors that record attention probabilities at chosen token positions.

Only the UNet's cross-attention layers (module names ending in ``attn2``) get the recording
processor; every other layer keeps its own (fast SDPA) processor. Processors are swapped by
module name through :func:`record_cross_attention`, a context manager that always restores
the originals, also when the body raises::

    recorder = AttentionRecorder()
    with record_cross_attention(unet, recorder):
        recorder.set_positions(positions)        # one list of key positions per batch item
        unet(x_t, t, encoder_hidden_states=ehs)
    loss = recorder.norm()                       # FMN's loss

The probabilities are computed explicitly as softmax(QK^T / sqrt(d)) in diffusers' batch-major
(batch * heads) layout, so gradients flow through them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from contextlib import contextmanager

import torch

__all__ = ["AttentionRecorder", "RecordingAttnProcessor", "cross_attention_names", "record_cross_attention"]


def cross_attention_names(unet) -> list[str]:
    """Processor names (as in ``unet.attn_processors``) of the cross-attention layers."""
    return [name for name in unet.attn_processors if name.endswith("attn2.processor")]


class AttentionRecorder:
    """Holds the token positions to watch and what the processors recorded, per layer.

    ``positions``: one list of key indices per batch item (lists may differ in length).
    With ``detach=True`` the records hold no graph (for visualisation); ``reduce_heads`` averages
    over heads as it records (B, Q, n) instead of (B, H, Q, n). When the UNet sees twice as many
    items as there are position lists (classifier-free guidance), only the second, conditional
    half is recorded.
    """

    def __init__(self, detach: bool = False, reduce_heads: bool = False):
        self.detach = detach
        self.reduce_heads = reduce_heads
        self.records: dict[str, list[torch.Tensor]] = defaultdict(list)
        self._index: torch.Tensor | None = None
        self._weight: torch.Tensor | None = None

    def set_positions(self, positions: Sequence[Sequence[int]]) -> None:
        if not positions or any(len(p) == 0 for p in positions):
            raise ValueError("every batch item needs at least one token position to record")
        n = max(len(p) for p in positions)
        index = torch.zeros(len(positions), n, dtype=torch.long)
        weight = torch.zeros(len(positions), n)
        for b, pos in enumerate(positions):
            index[b, : len(pos)] = torch.as_tensor(list(pos), dtype=torch.long)
            weight[b, : len(pos)] = 1.0
        self._index, self._weight = index, weight
        self.clear()

    def clear(self) -> None:
        self.records = defaultdict(list)

    def record(self, layer: str, probs: torch.Tensor, batch: int, heads: int) -> None:
        """``probs``: (batch * heads, queries, keys), batch-major as diffusers lays it out."""
        if self._index is None:
            return
        q, k = probs.shape[-2:]
        probs = probs.view(batch, heads, q, k)
        n_items = self._index.shape[0]
        if batch == 2 * n_items:  # classifier-free guidance: [uncond, cond]
            probs = probs[n_items:]
        elif batch != n_items:
            raise ValueError(f"recorder has positions for {n_items} prompts but the UNet saw a batch of {batch}")
        index = self._index.to(probs.device)
        weight = self._weight.to(device=probs.device, dtype=probs.dtype)
        picked = probs.gather(-1, index[:, None, None, :].expand(n_items, heads, q, index.shape[1]))
        picked = picked * weight[:, None, None, :]
        if self.reduce_heads:
            picked = picked.mean(1)
        self.records[layer].append(picked.detach() if self.detach else picked)

    def norm(self) -> torch.Tensor:
        """Frobenius norm (not squared) of all recorded probabilities, over every layer."""
        return self.squared_norm().sqrt()

    def squared_norm(self) -> torch.Tensor:
        """The square of ``norm()``: a sum over items, so data-parallel shares add up."""
        squares = [r.float().pow(2).sum() for rs in self.records.values() for r in rs]
        if not squares:
            raise RuntimeError("nothing was recorded: did the UNet run inside record_cross_attention()?")
        return torch.stack(squares).sum()

    def mass(self) -> float:
        """Mean attention mass the watched tokens receive (summed over them), over all records."""
        vals = [r.detach().float().sum(-1).mean() for rs in self.records.values() for r in rs]
        return float(torch.stack(vals).mean()) if vals else 0.0


class RecordingAttnProcessor:
    """Explicit-probability attention for one cross-attention layer; records into a recorder."""

    def __init__(self, name: str, recorder: AttentionRecorder):
        self.name = name
        self.recorder = recorder

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch = hidden_states.shape[0]
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key, value = attn.to_k(context), attn.to_v(context)
        query, key, value = (attn.head_to_batch_dim(x) for x in (query, key, value))
        probs = attn.get_attention_scores(query, key, attention_mask)
        self.recorder.record(self.name, probs, batch, attn.heads)
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@contextmanager
def record_cross_attention(unet, recorder: AttentionRecorder, layers: Sequence[str] | None = None):
    """Install recording processors on the cross-attention layers; restore the originals after.

    ``layers``: processor names to record (default: every ``attn2``); must be cross-attention.
    """
    original = dict(unet.attn_processors)
    names = cross_attention_names(unet) if layers is None else list(layers)
    bad = [n for n in names if n not in original or not n.endswith("attn2.processor")]
    if bad:
        raise ValueError(f"not cross-attention processors of this UNet: {bad[:3]}")
    if not names:
        raise ValueError("this UNet has no cross-attention (attn2) layers")
    swapped = dict(original)
    for n in names:
        swapped[n] = RecordingAttnProcessor(n.removesuffix(".processor"), recorder)
    unet.set_attn_processor(swapped)
    try:
        yield recorder
    finally:
        unet.set_attn_processor(original)
