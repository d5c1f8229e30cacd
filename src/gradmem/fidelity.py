"""How faithfully a memory holds its context: decode the context back from the memory alone.

Each block of m vectors is decoded greedily with the WRITE head (the head the reconstruction loss
trains; the LM head when the method has none), with nothing but the memory as the prefix. The
decoded text is scored against the original context, both free-running (greedy token accuracy)
and teacher-forced (the WRITE head's next-token accuracy given [memory; previous context tokens]).
"""

from __future__ import annotations

import torch
from torch import Tensor

from gradmem.data import TokenBatch
from gradmem.model import MemoryModel


@torch.no_grad()
def greedy_reconstruction(model: MemoryModel, prefix: Tensor, length: int) -> Tensor:
    """(R, P, D) memory blocks -> (R, length) token ids generated greedily from each block alone."""
    backbone = model.backbone
    tokens = prefix.new_zeros(prefix.shape[0], 0, dtype=torch.long)
    for _ in range(length):
        hidden = backbone.hidden(torch.cat((prefix, backbone.embed(tokens)), 1))[:, -1]  # (R, D)
        tokens = torch.cat((tokens, model.method.write_logits(backbone, hidden).argmax(-1, keepdim=True)), 1)
    return tokens


@torch.no_grad()
def teacher_forced_accuracy(model: MemoryModel, prefix: Tensor, context: TokenBatch) -> float:
    """Share of the context's real tokens the WRITE head predicts from [block; previous tokens]."""
    logits = model.method.reconstruction_logits(model.backbone, prefix, model.backbone.embed(context.ids))  # (R, N, V)
    right = (logits.argmax(-1) == context.ids) & context.mask
    return float(right.sum() / context.mask.sum())
