"""How faithfully a memory holds its context: decode the context back from the memory alone.

Each block of m vectors is decoded greedily with the WRITE head (the head the reconstruction loss
trains; the LM head when the method has none), with nothing but the memory as the prefix, and with
the backbone as WRITE runs it (inside `write_mode()`: write-only LoRA adapters on). The
decoded text is scored against the original context, both free-running (greedy token accuracy)
and teacher-forced (the WRITE head's next-token accuracy given [memory; previous context tokens]).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from gradmem.core.backbone import incremental_decoding
from gradmem.core.batch import TokenBatch, pad_right
from gradmem.core.errors import InvalidInput, Overloaded
from gradmem.core.memory import Memory
from gradmem.methods.model import MemoryModel

# What the "reconstruction" of a report is, said wherever it is shown: it is easily mistaken for
# the stored context, and after meta-training it is often far from it while answers are right.
RECONSTRUCTION_NOTE = (
    "greedy reconstruction: the WRITE head decoding the memory alone, token by token; "
    "a fidelity probe, not the stored context"
)


@torch.no_grad()
def greedy_reconstruction(
    model: MemoryModel,
    prefix: Tensor,
    length: int,
    should_stop: Callable[[], bool] | None = None,
    cache: bool = True,
) -> Tensor:
    """(R, P, D) memory blocks -> (R, length) token ids generated greedily from each block alone.
    `should_stop` is asked before every token; once it says so, Overloaded is raised (the request
    that wanted the decode has passed its deadline: the model thread is freed for others).

    A backbone that decodes incrementally runs each block once and then one position per token
    (`Budget.reconstruction_positions` counts both ways); `cache=False` re-runs the whole
    [block; tokens so far] at every token instead (the same tokens, for comparison)."""
    backbone = model.backbone
    incremental = incremental_decoding(backbone) if cache else None
    tokens = prefix.new_zeros(prefix.shape[0], 0, dtype=torch.long)
    state: Any = None  # the backbone's KV cache of [block; tokens so far] once the block has run
    # The reconstruction loss is computed inside write_mode(); decoding outside it would probe a
    # different model than the one that wrote the memory (write-only LoRA adapters off).
    with backbone.write_mode():
        for _ in range(length):
            if should_stop is not None and should_stop():
                raise Overloaded("the reconstruction was stopped: its request passed its deadline")
            if incremental is None:
                hidden = backbone.hidden(torch.cat((prefix, backbone.embed(tokens)), 1))  # (R, P + t, D)
            elif state is None:
                hidden, state = incremental.prefill(prefix)  # (R, P, D)
            else:
                hidden, state = incremental.extend(backbone.embed(tokens[:, -1:]), state)  # (R, 1, D)
            next_token = model.method.write_logits(backbone, hidden[:, -1]).argmax(-1, keepdim=True)  # (R, 1)
            tokens = torch.cat((tokens, next_token), 1)
    return tokens


@torch.no_grad()
def teacher_forced_accuracy(model: MemoryModel, prefix: Tensor, context: TokenBatch) -> float:
    """Share of the context's real tokens the WRITE head predicts from [block; previous tokens],
    with the backbone in write mode as in WRITE."""
    backbone = model.backbone
    with backbone.write_mode():
        logits = model.method.reconstruction_logits(backbone, prefix, backbone.embed(context.ids))  # (R, N, V)
    right = (logits.argmax(-1) == context.ids) & context.mask
    return float(right.sum() / context.mask.sum())


@torch.no_grad()
def reconstruction_report(
    model: MemoryModel,
    tokenizer: Any,
    memory: Memory,
    meta: dict[str, Any],
    block_vectors: int,
    chunk_tokens: int,
    context: str | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Greedy reconstruction of a one-row memory (`meta`: its described sidecar), block by block,
    with token and teacher-forced accuracy against `context` when it is given; `should_stop` as
    in `greedy_reconstruction`."""
    total, chunk = meta["context_tokens"], meta["write"].get("chunk_tokens", chunk_tokens)
    lengths = [min(chunk, total - s) for s in range(0, total, chunk)]
    blocks = memory.prefix.view(len(lengths), block_vectors, -1)  # (blocks, P, D)
    decoded = greedy_reconstruction(model, blocks, max(lengths), should_stop)
    tokens = [t for row, n in zip(decoded.tolist(), lengths) for t in row[:n]]
    result = {
        "id": meta.get("id"),
        "write_loss": meta["write_loss"],
        "final_write_loss": meta["final_write_loss"],
        "steps_taken": meta.get("steps_taken"),
        "blocks": len(lengths),
        "reconstruction": tokenizer.decode(tokens, skip_special=False),
        "reconstruction_note": RECONSTRUCTION_NOTE,
        "context": context,
        "memory_bytes": meta["memory_bytes"],
        "kv_cache_bytes": meta["kv_cache_bytes"],
    }
    if context is not None:
        ids = tokenizer.encode(context)
        if len(ids) != total:
            raise InvalidInput(f"the given context has {len(ids)} tokens, the memory was written from {total}")
        result["token_accuracy"] = sum(a == b for a, b in zip(tokens, ids)) / total
        rows = [ids[i : i + chunk] for i in range(0, total, chunk)]
        result["teacher_forced_accuracy"] = teacher_forced_accuracy(
            model, blocks, pad_right(rows, tokenizer.pad_id).to(blocks.device)
        )
    return result
