"""SHA-256 of tensors and modules: what identifies weights and memories whatever their device."""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor, nn


def tensor_sha256(tensor: Tensor) -> str:
    """SHA-256 of a tensor's raw bytes (any dtype, any device)."""
    return hashlib.sha256(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def tensors_sha256(tensors: dict[str, Tensor]) -> str:
    """SHA-256 over (name, shape, dtype, bytes) of each tensor, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def weights_hash(module: nn.Module) -> str:
    """SHA-256 over every parameter and buffer (name, shape, dtype, bytes): identifies the weights."""
    return tensors_sha256(module.state_dict())
