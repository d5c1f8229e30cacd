"""Per-request work budgets of the service, checked before any tensor is allocated.

A WRITE costs about (context tokens) x (steps + 1) token passes through the backbone with its
backward pass, and all chunks of a batched WRITE are held at once; an answer costs (question +
answer tokens) per question, and a batched decode holds every question of the batch. The budget
bounds each request and each batch the batcher forms, so one request can neither exhaust memory
nor hold the single model thread for long. Exceeding it raises LimitExceeded naming the limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gradmem.core.errors import LimitExceeded


@dataclass
class Budget:
    """Work limits of one request and of one batched model call."""

    max_write_tokens: int = 2048  # context tokens in one write request
    max_write_steps: int = 50  # WRITE steps one request may ask for
    max_write_token_steps: int = 16384  # context tokens x max(steps, 1) of one request, and of one batched WRITE
    max_question_tokens: int = 256  # tokens in one question
    max_ask_tokens: int = 4096  # one request: sum over its questions of (question tokens + answer tokens)
    max_batch_ask_tokens: int = 16384  # one batched decode: the same sum over all requests in the batch
    max_reconstruction_positions: int = 262144  # positions one reconstruction runs the backbone on (its real cost)

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Budget.{name} must be an integer >= 1, got {value!r}")
        if self.max_batch_ask_tokens < self.max_ask_tokens:
            raise ValueError("max_batch_ask_tokens must be >= max_ask_tokens (a batch holds at least one request)")

    @staticmethod
    def write_cost(tokens: int, steps: int) -> int:
        """Token passes of a write: its tokens times its steps (a 0-step write still costs one pass)."""
        return tokens * max(steps, 1)

    @staticmethod
    def ask_cost(question_tokens: Sequence[int], max_new_tokens: int) -> int:
        """Decode positions of an ask: question plus answer tokens, summed over its questions."""
        return sum(question_tokens) + len(question_tokens) * max_new_tokens

    def check_write(self, tokens: int, steps: int) -> int:
        """The write's cost; LimitExceeded if it is over a limit."""
        if tokens > self.max_write_tokens:
            raise LimitExceeded(
                f"context of {tokens} tokens exceeds the limit of {self.max_write_tokens} tokens per write"
            )
        if steps > self.max_write_steps:
            raise LimitExceeded(f"{steps} write steps exceed the limit of {self.max_write_steps} steps per write")
        cost = self.write_cost(tokens, steps)
        if cost > self.max_write_token_steps:
            raise LimitExceeded(
                f"{tokens} context tokens x {max(steps, 1)} steps = {cost} exceeds the limit of "
                f"{self.max_write_token_steps} token-steps per write; use fewer steps or a shorter text"
            )
        return cost

    def check_ask(self, question_tokens: Sequence[int], max_new_tokens: int) -> int:
        """The ask's cost; LimitExceeded if a question or the whole request is over a limit."""
        longest = max(question_tokens, default=0)
        if longest > self.max_question_tokens:
            raise LimitExceeded(
                f"a question of {longest} tokens exceeds the limit of {self.max_question_tokens} tokens per question"
            )
        cost = self.ask_cost(question_tokens, max_new_tokens)
        if cost > self.max_ask_tokens:
            raise LimitExceeded(
                f"{len(question_tokens)} questions with {max_new_tokens} answer tokens each need {cost} "
                f"decode tokens, over the limit of {self.max_ask_tokens} per request"
            )
        return cost

    @staticmethod
    def reconstruction_cost(context_tokens: int, chunk_tokens: int) -> int:
        """Decode positions of a memory's greedy reconstruction, in the unit of an ask's cost: every
        block is one decoded row, and all rows run to the longest chunk's length."""
        blocks = -(-context_tokens // chunk_tokens)
        return blocks * min(chunk_tokens, context_tokens)

    @staticmethod
    def reconstruction_positions(context_tokens: int, chunk_tokens: int, block_vectors: int, *, cached: bool) -> int:
        """Positions the backbone runs on for a greedy reconstruction (gradmem.serve.fidelity), its
        real cost; all blocks run to the longest chunk's length n. Without a KV cache the step that
        decodes token t re-runs the block's m memory vectors and the t tokens before it:
        blocks x sum_t (m + t). With one (`cached`: the backbone decodes incrementally) the block
        runs once and every token but the last runs once: blocks x (m + n - 1)."""
        blocks, length = -(-context_tokens // chunk_tokens), min(chunk_tokens, context_tokens)
        if cached:
            return blocks * (block_vectors + length - 1)
        return blocks * (length * block_vectors + length * (length - 1) // 2)

    def check_reconstruction(
        self, context_tokens: int, chunk_tokens: int, block_vectors: int = 0, *, cached: bool
    ) -> int:
        """The reconstruction's cost in decode tokens (under the per-request decode limit of an ask);
        LimitExceeded if it is over that, or if the positions it runs the backbone on (`cached`: as
        in `reconstruction_positions`) are over max_reconstruction_positions."""
        cost = self.reconstruction_cost(context_tokens, chunk_tokens)
        if cost > self.max_ask_tokens:
            raise LimitExceeded(
                f"reconstructing this memory needs {cost} decode tokens, over the limit of "
                f"{self.max_ask_tokens} per request (max_ask_tokens)"
            )
        positions = self.reconstruction_positions(context_tokens, chunk_tokens, block_vectors, cached=cached)
        if positions > self.max_reconstruction_positions:
            raise LimitExceeded(
                f"reconstructing this memory runs the model on {positions} positions, over the limit of "
                f"{self.max_reconstruction_positions} (max_reconstruction_positions)"
            )
        return cost
