"""Data-parallel meta-training with PyTorch DDP: each process takes its slice of the global batch.

The training loss is the mean over examples of each example's READ loss, so with equal slices the
gradient DDP averages over processes is exactly the single-process gradient of the global batch
(the WRITE inner gradients are per example and never cross examples). Every process then applies
the same clipped AdamW update, so the weights stay identical. Process-group setup comes from the
launcher (`torchrun`, `accelerate launch`); see scripts/train_ddp.py and docs/performance.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gradmem.core.batch import Batch, TokenBatch


@dataclass(frozen=True)
class DataParallel:
    """Where this process sits in a data-parallel group (the default: a single process)."""

    rank: int = 0  # this process, 0..world_size-1
    world_size: int = 1  # processes sharing each global batch
    device_ids: tuple[int, ...] | None = None  # DDP device_ids: (local GPU,) on CUDA, None on CPU

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {self.rank}, world_size {self.world_size}")

    @property
    def is_main(self) -> bool:
        """The process that logs and writes checkpoints."""
        return self.rank == 0

    @classmethod
    def from_process_group(cls, device: torch.device | None = None) -> DataParallel:
        """Read rank and size from an initialised torch.distributed process group."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        ids = (device.index,) if device is not None and device.type == "cuda" and device.index is not None else None
        return cls(dist.get_rank(), dist.get_world_size(), ids)

    def shard(self, batch: Batch) -> Batch:
        """This process's contiguous slice of the global batch (all slices equal in size)."""
        if self.world_size == 1:
            return batch
        total = len(batch)
        if total % self.world_size:
            raise ValueError(
                f"global batch {total} does not split evenly over {self.world_size} processes; "
                "unequal slices would change the loss weighting"
            )
        size = total // self.world_size
        rows = slice(self.rank * size, (self.rank + 1) * size)
        return Batch(
            _rows(batch.context, rows), _rows(batch.query, rows), _rows(batch.target, rows), batch.answer_len[rows]
        )

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to call for training forwards: DDP around `model` when there are several processes."""
        if self.world_size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        # Gradients reach every parameter only through the full meta-gradient; first-order / detached
        # WRITE modes leave the WRITE head without one, hence find_unused_parameters.
        return DistributedDataParallel(
            model, device_ids=list(self.device_ids) if self.device_ids else None, find_unused_parameters=True
        )

    def average_gradients(self, parameters: list[nn.Parameter]) -> None:
        """Average `.grad` over the processes (for steps that bypass DDP, e.g. the compiled step)."""
        if self.world_size == 1:
            return
        import torch.distributed as dist

        for p in parameters:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.world_size


def _rows(tokens: TokenBatch, rows: slice) -> TokenBatch:
    """Rows of a right-padded batch, trimmed to the slice's own longest row."""
    lengths = tokens.lengths[rows]
    width = int(lengths.max()) if len(lengths) else 0
    return TokenBatch(tokens.ids[rows, :width], lengths)
