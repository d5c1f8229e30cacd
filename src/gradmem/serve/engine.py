"""A trained GradMem checkpoint ready for use: write texts into a memory store, answer questions
from stored memories, and inspect how faithfully a memory holds its context.

Shared by the command line and the HTTP service. Contexts longer than the model's window are cut
into chunks, every chunk is written into its own block of m vectors (all chunks of all texts in one
batched WRITE), and the blocks are concatenated into one prefix. Adaptive writes stop each chunk
once its reconstruction loss reaches a target. Memories are keyed by model, context and write
settings in a `MemoryStore`, so the same document is only written once.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from gradmem.backbones.base import context_state_floats
from gradmem.core.backbone import incremental_decoding
from gradmem.core.batch import pad_right
from gradmem.core.errors import DamagedMemory, InvalidInput, LimitExceeded, NotFound, Overloaded, StoreUnavailable
from gradmem.core.memory import Memory, WriteStats
from gradmem.core.memory_file import build_sidecar, load_memory, model_fingerprint
from gradmem.core.method import reconstructing
from gradmem.core.sequence import generated_rows
from gradmem.core.task import Tokenizer
from gradmem.methods.model import MemoryModel
from gradmem.serve.engine_config import EngineConfig, StepCallback, TaskText, WriteResult
from gradmem.serve.fidelity import reconstruction_report
from gradmem.serve.store import MemoryStore, memory_key, store_errors
from gradmem.tasks.tokenizers import unknown_characters


class Engine:
    """A MemoryModel with its tokenizer and a MemoryStore. Not thread-safe for model calls: the
    service runs them on one worker thread; store operations are safe from any thread."""

    def __init__(
        self,
        model: MemoryModel,
        tokenizer: Tokenizer,
        store: MemoryStore,
        cfg: EngineConfig | None = None,
        text: TaskText | None = None,
    ) -> None:
        """`text`: the checkpoint's task's question layout and example (`TaskText.of(task)`), so users
        ask plain questions; the default asks questions as typed."""
        method = reconstructing(model.method)  # the reconstruction report reads a memory back as text
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.store = store
        self.cfg = cfg or EngineConfig()
        self.text = text or TaskText()
        self.fingerprint = model_fingerprint(model)
        self.block_vectors = method.prefix_size()
        # A reconstruction runs one position per token with a KV cache, the whole prefix again
        # without one: the budget counts what this backbone will really run.
        self.decodes_incrementally = incremental_decoding(model.backbone) is not None
        window = model.max_positions
        room = None if window is None else window - self.block_vectors
        if room is not None and room < 1:
            raise ValueError(
                f"the model's window of {window} positions has no room beside {self.block_vectors} memory vectors"
            )
        self.chunk_tokens = self.cfg.chunk_tokens or room or 512
        if room is not None and self.chunk_tokens > room:
            raise ValueError(
                f"chunk_tokens={self.chunk_tokens} exceeds the {room} tokens the window leaves beside memory"
            )
        self._cache: OrderedDict[str, Memory] = OrderedDict()
        self._cache_lock = threading.Lock()

    # ---- limits and settings -------------------------------------------------------------
    @property
    def max_context_tokens(self) -> int:
        return self.cfg.max_blocks * self.chunk_tokens

    def settings(self, steps: int | None, lr: float | None, target_loss: float | None) -> dict[str, Any]:
        """The effective write settings (part of a memory's store key); InvalidInput for steps < 0,
        an lr that is not a finite number > 0 or a target loss that is not a finite number >= 0."""
        cfg = self.model.method.config.write
        if steps is not None and steps < 0:
            raise InvalidInput(f"write steps must be >= 0, got {steps}")
        if lr is not None and not 0 < lr < math.inf:
            raise InvalidInput(f"the inner lr must be a finite number > 0, got {lr}")
        if target_loss is not None and not 0 <= target_loss < math.inf:
            raise InvalidInput(f"the target loss must be a finite number >= 0, got {target_loss}")
        return {
            "steps": cfg.steps if steps is None else int(steps),
            "lr": cfg.optim.lr if lr is None else float(lr),
            "optim": cfg.optim.name,
            "target_loss": target_loss,
            "chunk_tokens": self.chunk_tokens,
        }

    def encode(self, text: str) -> list[int]:
        """Token ids of a context. InvalidInput for an empty or whitespace-only text or characters
        outside the vocabulary (two texts differing there would share one memory), LimitExceeded
        past the block limit."""
        if not text.strip():
            raise InvalidInput("cannot write an empty or whitespace-only context")
        ids = self._in_vocabulary(text, "the context")
        if len(ids) > self.max_context_tokens:
            raise LimitExceeded(
                f"context of {len(ids)} tokens exceeds the limit of {self.max_context_tokens} tokens "
                f"({self.cfg.max_blocks} blocks x {self.chunk_tokens} tokens per chunk)"
            )
        return ids

    def encode_question(self, question: str) -> list[int]:
        """Token ids of a question laid out as the task lays out its queries; InvalidInput if it is
        empty or has characters outside the vocabulary."""
        if not question.strip():
            raise InvalidInput("a question must not be empty or whitespace-only")
        self._in_vocabulary(question, "a question")  # names the user's words, not the layout's
        return self.tokenizer.encode(self.text.question_layout.format(question=question.strip()))

    def _in_vocabulary(self, text: str, what: str) -> list[int]:
        ids = self.tokenizer.encode(text)
        unk = self.tokenizer.unk_id
        if unk is None or unk not in ids:
            return ids
        named = unknown_characters(self.tokenizer, text)  # words for a word tokenizer, else characters
        listed = ", ".join(named) if named else f"{ids.count(unk)} token(s)"
        raise InvalidInput(f"{what} has words or characters outside the model's vocabulary: {listed}")

    def chunks(self, ids: list[int]) -> list[list[int]]:
        return [ids[i : i + self.chunk_tokens] for i in range(0, len(ids), self.chunk_tokens)]

    # ---- WRITE ---------------------------------------------------------------------------
    def write_rows(
        self,
        rows: Sequence[Sequence[int]],
        steps: int | None = None,
        lr: float | None = None,
        target_loss: float | None = None,
        on_loss: Callable[[int, Tensor], None] | None = None,
    ) -> Memory:
        """Write each token row into its own block: (R, P, D) prefix with stats. `on_loss(step, (R,) loss)`
        is called as each loss is computed (before every step, and once after the last)."""
        device = next(self.model.parameters()).device
        context = pad_right(rows, self.tokenizer.pad_id).to(device)
        with torch.no_grad():
            memory = self.model.write(
                context, steps=steps, lr=lr, measure_final=True, target_loss=target_loss, on_loss=on_loss
            )
        return Memory(memory.prefix.detach(), None, memory.stats)

    def write_texts(
        self,
        texts: Sequence[str],
        steps: int | None = None,
        lr: float | None = None,
        target_loss: float | None = None,
        on_step: StepCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[WriteResult]:
        """Write several texts in one batched WRITE (chunks of all texts side by side); texts whose
        memory is already stored are not written again. `should_stop` is asked before every step;
        once it says so, Overloaded is raised and nothing is stored (every request of the batch has
        passed its deadline: the model thread is freed for others)."""
        settings = self.settings(steps, lr, target_loss)
        encoded = [self.encode(t) for t in texts]
        keys = [memory_key(self.fingerprint, ids, settings) for ids in encoded]
        todo: dict[str, int] = {}  # key -> first text index needing a write (duplicates share it)
        for i, key in enumerate(keys):
            if key not in self.store and key not in todo:
                todo[key] = i
        written: dict[str, tuple[Tensor, dict[str, Any]]] = {}
        if todo:
            rows, owner = [], []
            for i in todo.values():
                for chunk in self.chunks(encoded[i]):
                    rows.append(chunk)
                    owner.append(i)
            owner_t = torch.tensor(owner)

            def on_loss(step: int, loss: Tensor) -> None:
                if should_stop is not None and should_stop():
                    raise Overloaded(f"the write was stopped before step {step}: its request passed its deadline")
                if on_step is not None:
                    for i in todo.values():
                        on_step(i, step, float(loss.cpu()[owner_t == i].mean()))

            memory = self.write_rows(rows, steps, lr, target_loss, on_loss)
            if not torch.isfinite(memory.prefix).all():  # stored, it would answer nonsense and break listings
                raise InvalidInput(
                    f"the write diverged (the memory holds non-finite values) at inner lr {settings['lr']:g}; "
                    "nothing was stored: use a smaller lr"
                )
            for key, i in todo.items():
                rows_i = (owner_t == i).nonzero()[:, 0]
                blocks = len(rows_i)
                one = Memory(
                    memory.prefix[rows_i].reshape(1, blocks * self.block_vectors, -1),
                    None,
                    _select_stats(memory.stats, rows_i),
                )
                sidecar = build_sidecar(one, self.model, encoded[i], settings, self.fingerprint, blocks)
                sidecar["context_chars"] = len(texts[i])
                written[key] = (one.prefix, sidecar)
        results = []
        for i, key in enumerate(keys):
            if key in written:
                meta, created = self.store.get_or_write(key, lambda k=key: written.pop(k), texts[i])
            else:
                meta, created = self.store.show(key), False
            results.append(WriteResult(key, created, self.describe(meta)))
        return results

    def describe(self, meta: dict[str, Any]) -> dict[str, Any]:
        """A sidecar plus sizes: the memory's bytes next to a full-context KV cache's bytes."""
        item = torch.empty(0, dtype=getattr(torch, meta["dtype"])).element_size()
        return {
            **meta,
            "memory_bytes": meta["num_vectors"] * meta["hidden_size"] * item,
            "kv_cache_bytes": context_state_floats(self.model.backbone, meta["context_tokens"]) * item,
        }

    # ---- READ ----------------------------------------------------------------------------
    def memory(self, memory_id: str) -> Memory:
        """A stored memory, loaded once and cached (KeyError if absent)."""
        with self._cache_lock:
            if memory_id in self._cache:
                self._cache.move_to_end(memory_id)
                return self._cache[memory_id]
        if memory_id not in self.store:
            raise NotFound(f"no memory {memory_id!r}")
        try:
            with store_errors("read the memory"):
                memory, _ = load_memory(
                    self.store.path(memory_id),
                    self.model,
                    self.fingerprint,
                    label=f"memory {memory_id}",
                    follow_symlinks=False,
                )
        except (DamagedMemory, StoreUnavailable):
            # A delete between reading the sidecar and the tensor leaves a "missing tensor": the
            # memory is gone, not damaged (the sidecar goes first, so a damaged one still has it).
            if memory_id not in self.store:
                raise NotFound(f"no memory {memory_id!r}") from None
            raise
        with self._cache_lock:
            self._cache[memory_id] = memory
            while len(self._cache) > self.cfg.cache_memories:
                self._cache.popitem(last=False)
        return memory

    def forget(self, memory_id: str) -> bool:
        """Delete a memory from the store and the cache."""
        with self._cache_lock:
            self._cache.pop(memory_id, None)
        return self.store.delete(memory_id)

    def ask(self, items: Sequence[tuple[str, str]], max_new_tokens: int | None = None) -> list[str]:
        """Answer (memory id, question) pairs, batched across memories (one decode per prefix length)."""
        return self.answer([(self.memory(memory_id), q) for memory_id, q in items], max_new_tokens)

    def answer(self, items: Sequence[tuple[Memory, str]], max_new_tokens: int | None = None) -> list[str]:
        """Answer (one-row memory, question) pairs; rows with equal prefix length share one greedy decode."""
        max_new = max_new_tokens or self.cfg.max_new_tokens
        queries = [self.encode_question(q) for _, q in items]
        window = self.model.max_positions
        for (memory, _), ids in zip(items, queries):
            if window is not None and memory.num_vectors + len(ids) + max_new > window:
                raise LimitExceeded(
                    f"memory ({memory.num_vectors} vectors) + question ({len(ids)} tokens) + "
                    f"{max_new} answer tokens exceed the model's {window} positions"
                )
        answers: list[str] = [""] * len(items)
        groups: dict[int, list[int]] = {}
        for i, (memory, _) in enumerate(items):
            groups.setdefault(memory.num_vectors, []).append(i)
        device = next(self.model.parameters()).device
        for index in groups.values():
            prefix = torch.cat([items[i][0].prefix for i in index])  # (G, P, D)
            batch = pad_right([queries[i] for i in index], self.tokenizer.pad_id).to(device)
            out = self.model.generate(Memory(prefix), batch, max_new, self.tokenizer.eos_id)
            for i, row in zip(index, generated_rows(out, self.tokenizer.eos_id)):
                answers[i] = self._cut(self.tokenizer.decode(row))
        return answers

    def _cut(self, text: str) -> str:
        stop = self.cfg.stop
        if stop and stop in text:
            return text[: text.index(stop) + len(stop)]
        return text

    # ---- INSPECT -------------------------------------------------------------------------
    def reconstruct(
        self, memory_id: str, context: str | None = None, should_stop: Callable[[], bool] | None = None
    ) -> dict[str, Any]:
        """`reconstruct_memory` for a stored memory (its stored context is used when none is given)."""
        context = context if context is not None else self.store.context(memory_id)
        return self.reconstruct_memory(self.memory(memory_id), self.store.show(memory_id), context, should_stop)

    def reconstruct_memory(
        self,
        memory: Memory,
        meta: dict[str, Any],
        context: str | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> dict[str, Any]:
        """Decode the context back from the memory alone, scored against the context when it is
        known (see gradmem.serve.fidelity.reconstruction_report); the decode stops between tokens
        once `should_stop()` is true."""
        return reconstruction_report(
            self.model,
            self.tokenizer,
            memory,
            self.describe(meta),
            self.block_vectors,
            self.chunk_tokens,
            context,
            should_stop,
        )


def _select_stats(stats: WriteStats, rows: Tensor) -> WriteStats:
    return WriteStats(
        losses=stats.losses[:, rows],
        grad_norms=stats.grad_norms[:, rows],
        final_loss=None if stats.final_loss is None else stats.final_loss[rows],
        steps_taken=None if stats.steps_taken is None else stats.steps_taken[rows],
    )


__all__ = ["Engine", "EngineConfig", "StepCallback", "TaskText", "WriteResult"]
