"""Right-padded sequence helpers: joining two padded batches row by row."""

from __future__ import annotations

import torch
from torch import Tensor


def concat_right(a: Tensor, a_len: Tensor | None, b: Tensor, b_len: Tensor) -> tuple[Tensor, Tensor]:
    """Join row b of `a` (first a_len[b] items) with row b of `b` (first b_len[b] items), right-padded.

    a: (B, Ta, *rest); b: (B, Tb, *rest); a_len None means every row of `a` is full.
    Returns (B, T, *rest) with T = max(a_len + b_len), and the joined lengths (B,).
    What lies after a row's length is unspecified: causal attention never lets it reach a real token.
    """
    batch, ta = a.shape[:2]
    if a_len is None:  # fixed-size prefix (GradMem, RMT): a plain concatenation is already packed
        return torch.cat((a, b), dim=1), b_len + ta
    total = a_len + b_len
    width = int(total.max())
    j = torch.arange(width, device=b.device)
    from_a = j[None, :] < a_len[:, None]  # (B, T)
    ia = j.clamp(max=max(ta - 1, 0)).expand(batch, -1)
    ib = (j[None, :] - a_len[:, None]).clamp(0, b.shape[1] - 1)
    rest = a.shape[2:]
    view = (batch, width) + (1,) * len(rest)
    ga = (
        torch.gather(a, 1, ia.reshape(view).expand((batch, width) + rest))
        if ta
        else torch.zeros_like(b[:, :1]).expand((batch, width) + rest)
    )
    gb = torch.gather(b, 1, ib.reshape(view).expand((batch, width) + rest))
    return torch.where(from_a.reshape(view), ga, gb), total


def append_after(a: Tensor, a_len: Tensor, extra: Tensor) -> tuple[Tensor, Tensor]:
    """Place `extra` (B, m, *rest) right after each row's a_len[b] real items of `a` (B, Ta, *rest).

    Returns the joined (B, max(a_len) + m, *rest) tensor and the (B, m) positions of the extra rows:
    appended after the real tokens, never after the pads (how RMT and ARMT place memory tokens).
    """
    m = extra.shape[1]
    joined, _ = concat_right(a, a_len, extra, torch.full_like(a_len, m))
    return joined, a_len[:, None] + torch.arange(m, device=a.device)


def gather_positions(x: Tensor, positions: Tensor) -> Tensor:
    """x: (B, T, D), positions: (B, K) long -> (B, K, D), positions clamped into range."""
    positions = positions.clamp(0, x.shape[1] - 1)
    return torch.gather(x, 1, positions[..., None].expand(-1, -1, x.shape[-1]))


def per_example_cross_entropy(logits: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
    """(B,) mean cross-entropy over each row's real tokens. logits: (B, T, V); ids, mask: (B, T).

    Half-precision logits are upcast so the loss is accurate; float64 stays float64 (tests).
    """
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten(), reduction="none").view_as(ids)
    return (ce * mask).sum(1) / mask.sum(1).clamp_min(1)  # a row with no scored token has loss 0, not nan


def generated_rows(generated: Tensor, eos_id: int | None) -> list[list[int]]:
    """Each row of a `MemoryModel.generate` output up to its end: the first -1 (stopped) or EOS (excluded)."""
    rows = []
    for row in generated.tolist():
        kept = []
        for token in row:
            if token < 0 or token == eos_id:
                break
            kept.append(token)
        rows.append(kept)
    return rows
