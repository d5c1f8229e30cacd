"""GradMem: memory written by K steps of gradient descent on a context-reconstruction loss.

Learned parts: the initial memory M0 (m x d), an optional projection applied before the memory
enters the model (shared linear map, or per-example fast weights that are written too), an
optional WRITE head (a copy of the LM head used only for reconstruction) and optional learned
control tokens around the memory. The backbone stays outside: it is passed to `write`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from gradmem.core.backbone import Backbone
from gradmem.core.batch import TokenBatch
from gradmem.core.memory import MEMORY_INITS, Memory, WriteStats, init_memory0, initial_memory
from gradmem.core.sequence import per_example_cross_entropy
from gradmem.core.write import WriteConfig, WriteOptions, write

PROJECTIONS = ("none", "linear", "fast")
INNER_LOSS_STEPS = ("all", "last")


@dataclass
class GradMemConfig:
    """Shape of the memory and how it is written."""

    num_memory: int = 8  # m, memory vectors
    projection: str = "linear"  # "none" | "linear" (shared d x d, init identity) | "fast" (per-example, written)
    write_head: bool = True  # separate reconstruction head initialised from the LM head
    control_tokens: bool = False  # learned vectors placed before and after the memory
    init_std: float = 0.02  # std of the normal initialisation of M0
    init: str = "normal"  # M0: "normal" (init_std) | "mean_embedding" (the backbone's mean input embedding + noise)
    projection_bias: bool = False  # "linear" projection with a trainable bias, zero at init (the reference code's)
    inner_loss_weight: float = 0.0  # weight of the WRITE loss added to the training loss
    inner_loss_steps: str = "all"  # which WRITE losses that term averages: "all" K steps | "last" (reference code)
    ignore_context_id: int | None = (
        None  # context tokens with this id are left out of the WRITE loss (reference: pad id)
    )
    write: WriteConfig = field(default_factory=WriteConfig)  # steps, inner optimiser, grad mode

    def __post_init__(self) -> None:
        if isinstance(self.write, dict):  # built from JSON
            self.write = WriteConfig(**self.write)
        if self.num_memory < 1:
            raise ValueError(f"num_memory must be >= 1, got {self.num_memory}")
        if self.projection not in PROJECTIONS:
            raise ValueError(f"unknown projection {self.projection!r}; valid: {list(PROJECTIONS)}")
        if self.init not in MEMORY_INITS:
            raise ValueError(f"unknown init {self.init!r}; valid: {list(MEMORY_INITS)}")
        if self.init_std <= 0 or self.inner_loss_weight < 0:
            raise ValueError("init_std must be > 0 and inner_loss_weight >= 0")
        if self.inner_loss_steps not in INNER_LOSS_STEPS:
            raise ValueError(f"unknown inner_loss_steps {self.inner_loss_steps!r}; valid: {list(INNER_LOSS_STEPS)}")
        if self.projection_bias and self.projection != "linear":
            raise ValueError(f"projection_bias needs projection 'linear', got {self.projection!r}")


class GradMem(nn.Module):
    """The GradMem memory method (see module docstring)."""

    name = "gradmem"

    def __init__(self, backbone: Backbone, cfg: GradMemConfig) -> None:
        super().__init__()
        self.config = cfg
        d = backbone.hidden_size
        self.memory0 = initial_memory(cfg.num_memory, d, cfg.init_std)  # (m, D)
        self.projection = nn.Parameter(torch.eye(d)) if cfg.projection != "none" else None  # (D, D)
        self.projection_bias = nn.Parameter(torch.zeros(d)) if cfg.projection_bias else None  # (D,)
        self.write_head: nn.Linear | None = None
        if cfg.write_head:
            self.write_head = nn.Linear(d, backbone.vocab_size, bias=False)
            with torch.no_grad():
                self.write_head.weight.copy_(backbone.head_weight())
        self.control = nn.Parameter(torch.randn(2, d) * cfg.init_std) if cfg.control_tokens else None

    def init_from_backbone(self, backbone: Backbone) -> None:
        """M0 from the finished backbone when the config asks for it (gradmem.core.memory.init_memory0)."""
        init_memory0(self.memory0, backbone, self.config.init)

    def prefix_size(self) -> int:
        """Vectors READ sees: m, plus 2 control tokens if enabled."""
        return self.config.num_memory + (2 if self.control is not None else 0)

    def reading(self, backbone: Backbone, memory: Memory) -> AbstractContextManager:
        return nullcontext()  # the memory is a prefix: nothing to do inside the layers

    def state_floats(self, backbone: Backbone, context_tokens: int) -> int:
        """Floats stored per example: what is written (memory, and fast weights when used)."""
        d = self.memory0.shape[1]
        return self.config.num_memory * d + (d * d if self.config.projection == "fast" else 0)

    def initial_params(self, batch: int) -> tuple[Tensor, ...]:
        """The tensors WRITE starts from, one copy per example."""
        params: tuple[Tensor, ...] = (self.memory0.expand(batch, -1, -1),)  # (B, m, D)
        if self.config.projection == "fast":
            params += (self.projection.expand(batch, -1, -1),)  # (B, D, D)
        return params

    def prefix(self, params: tuple[Tensor, ...]) -> Tensor:
        """Written tensors -> (B, P, D) prefix embeddings that enter the model."""
        memory = params[0]  # (B, m, D)
        if self.config.projection == "fast":
            memory = torch.bmm(memory, params[1].transpose(1, 2))
        elif self.projection is not None:
            memory = memory @ self.projection.T
            if self.projection_bias is not None:
                memory = memory + self.projection_bias
        if self.control is not None:
            b = memory.shape[0]
            memory = torch.cat((self.control[:1].expand(b, 1, -1), memory, self.control[1:].expand(b, 1, -1)), 1)
        return memory

    def write_logits(self, backbone: Backbone, hidden: Tensor) -> Tensor:
        """(..., D) -> (..., V) with the WRITE head, or the LM head when there is none."""
        return self.write_head(hidden) if self.write_head is not None else backbone.logits(hidden)

    def reconstruction_logits(self, backbone: Backbone, prefix: Tensor, context_embeds: Tensor) -> Tensor:
        """(B, N, V) next-token logits of the context given [prefix; C]: position t predicts token t.

        The last prefix position predicts the first context token; pads come after the real tokens,
        so causal attention keeps them from influencing anything.
        """
        p = prefix.shape[1]
        hidden = backbone.hidden(torch.cat((prefix, context_embeds[:, :-1]), dim=1))[:, p - 1 :]  # (B, N, D)
        return self.write_logits(backbone, hidden)

    def reconstruction_loss(
        self, backbone: Backbone, prefix: Tensor, context: TokenBatch, context_embeds: Tensor
    ) -> Tensor:
        """(B,) mean next-token cross-entropy of each example's real context tokens (pads excluded)."""
        logits = self.reconstruction_logits(backbone, prefix, context_embeds)
        mask = context.mask
        if self.config.ignore_context_id is not None:
            mask = mask & (context.ids != self.config.ignore_context_id)
        return per_example_cross_entropy(logits, context.ids, mask)

    def write(self, backbone: Backbone, context: TokenBatch, options: WriteOptions = WriteOptions()) -> Memory:
        """Write each context of the batch into its own memory by K steps of gradient descent
        (gradmem.core.write.write; `options` overrides K and the inner lr, or stops adaptively)."""
        cfg = self.config.write
        total = cfg.steps if options.steps is None else options.steps
        if (
            torch.is_grad_enabled()
            and cfg.grad_mode == "second"
            and total > 0
            and not backbone.supports_double_backward()
        ):
            raise RuntimeError(
                "grad_mode='second' needs attention with a double backward, and this backbone's attention "
                "has none (fused SDPA/flash kernels). Use attention='math' (built-in) or "
                "attn_implementation='eager' (Hugging Face), or choose grad_mode='first' explicitly."
            )
        context_embeds = backbone.embed(context.ids)  # (B, N, D), computed once for all steps

        def loss_fn(params: tuple[Tensor, ...]) -> Tensor:
            return self.reconstruction_loss(backbone, self.prefix(params), context, context_embeds)

        # A backbone may change itself for WRITE only (write-only LoRA adapters); READ sees it unchanged.
        with backbone.write_mode():
            params, stats = write(
                loss_fn,
                self.initial_params(len(context)),
                cfg,
                options,
                keep_loss_graph=self.config.inner_loss_weight > 0,
            )
        return Memory(self.prefix(params), None, stats, self._inner_loss_term(stats))

    def _inner_loss_term(self, stats: WriteStats) -> Tensor | None:
        """weight x the WRITE loss, in the outer graph: mean over all steps, or the last step's."""
        losses = stats.graph_losses  # (K,) mean over examples of each step's pre-update loss
        if self.config.inner_loss_weight == 0 or losses is None or len(losses) == 0:
            return None
        chosen = losses.mean() if self.config.inner_loss_steps == "all" else losses[-1]
        return self.config.inner_loss_weight * chosen

    def export_config(self) -> dict[str, Any]:
        return asdict(self.config)
