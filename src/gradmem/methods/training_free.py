"""Training-free GradMem: write into memory with a frozen pretrained LM, no meta-training at all.

A baseline and a quick start for users without a training budget. Nothing is learned: M0 comes
from a rule (every memory vector = the mean input embedding of the vocabulary, so it starts where
the model's inputs live), there is no projection and no separate WRITE head (READ and WRITE use the
same LM head, so what the reconstruction loss fits is what READ sees), and the inner optimiser is
Adam, which copes with the badly scaled, untrained loss landscape better than plain SGD. Many
steps (tens) replace what meta-training would otherwise learn.
"""

from __future__ import annotations

import torch

from gradmem.core.backbone import Backbone
from gradmem.core.memory import mean_embedding
from gradmem.methods import build_method
from gradmem.methods.model import MemoryModel


def training_free_model(backbone: Backbone, num_memory: int = 4, steps: int = 25, lr: float = 0.02) -> MemoryModel:
    """GradMem on `backbone` as is: M0 = mean embedding, inner Adam with `lr`, `steps` write steps."""
    config = {
        "num_memory": num_memory,
        "projection": "none",
        "write_head": False,
        "write": {"steps": steps, "grad_mode": "none", "optim": {"name": "adam", "lr": lr}},
    }
    model = MemoryModel(backbone, build_method("gradmem", backbone, config))
    with torch.no_grad():
        model.method.memory0.copy_(mean_embedding(backbone).expand_as(model.method.memory0))
    model.requires_grad_(False)  # nothing here is trained; WRITE still differentiates w.r.t. the memory
    return model.eval()


__all__ = ["mean_embedding", "training_free_model"]
