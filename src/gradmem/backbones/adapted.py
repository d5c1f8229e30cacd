"""Backbone options: freezing, write-only LoRA, gradient checkpointing, bf16 autocast.

`AdaptedBackbone` wraps (never subclasses) a backbone and adds what training a pretrained LM
needs at small scale (all options for Hugging Face backbones; `bf16` for the built-in one too):
- `freeze`: backbone weights get no gradient; only GradMem's M0, projection and WRITE head train.
- `train_top_layers`: with `freeze`, the last k decoder layers and the final norm stay trainable
  (the same partial fine-tuning for every method, e.g. to give full/no-context baselines a budget).
- `lora`: LoRA adapters (peft) on the attention / MLP projections, active only inside
  `write_mode()` (GradMem's WRITE) and disabled during READ, so the reader is the unchanged model.
  The base weights are frozen; the adapters are meta-trained through the WRITE steps.
- `gradient_checkpointing`: recompute decoder layers in backward with non-reentrant
  `torch.utils.checkpoint`, which supports double backward (checked against the plain model in
  tests/test_pretrained_options.py). The reentrant variant has no double backward and is refused.
- `bf16`: run the decoder and LM head under bfloat16 autocast on the tensors' device (CUDA, or a
  CPU with AMX / AVX-512 bf16, where bf16 GEMMs are several times faster than fp32). Weights,
  optimiser state, the written memory and every loss stay float32: hidden states come back as
  float32 and cross-entropy upcasts the logits.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from gradmem.backbones.hf import HFBackbone
from gradmem.backbones.llama import LlamaBackbone
from gradmem.core.backbone import incremental_decoding
from gradmem.core.device import fast_bf16

DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


@dataclass
class LoraOptions:
    """Write-only LoRA adapters."""

    r: int = 8  # adapter rank
    alpha: float = 16.0  # scaling numerator (scale = alpha / r)
    dropout: float = 0.0  # dropout on the adapter input
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))  # module names

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"lora.r must be >= 1, got {self.r}")


@dataclass
class BackboneOptions:
    """Training options for a pretrained backbone (all off by default)."""

    freeze: bool = False  # no gradient to the backbone weights
    train_top_layers: int = 0  # with freeze: the last k decoder layers + final norm still train
    lora: LoraOptions | None = None  # write-only LoRA adapters (implies frozen base weights)
    gradient_checkpointing: bool = False  # recompute layers in backward (non-reentrant: double backward works)
    bf16: bool | str = False  # bfloat16 autocast for decoder and LM head, weights stay fp32; "auto": only where
    #                           bf16 is fast (a GPU, or a CPU with AMX / AVX512-BF16; gradmem.core.device.fast_bf16)

    def __post_init__(self) -> None:
        if isinstance(self.lora, dict):
            self.lora = LoraOptions(**self.lora)
        if isinstance(self.bf16, str) and self.bf16 != "auto":
            raise ValueError(f'bf16 must be true, false or "auto", got {self.bf16!r}')
        if self.train_top_layers < 0:
            raise ValueError(f"train_top_layers must be >= 0, got {self.train_top_layers}")
        if self.train_top_layers and not self.freeze:
            raise ValueError("train_top_layers needs freeze: true (without it every layer trains)")

    def any(self) -> bool:
        return self.freeze or self.lora is not None or self.gradient_checkpointing or self.bf16


OPTION_KEYS = ("freeze", "train_top_layers", "lora", "gradient_checkpointing", "bf16")


class AdaptedBackbone(nn.Module):
    """A HFBackbone with BackboneOptions applied; implements the Backbone protocol by delegation."""

    def __init__(self, inner: HFBackbone | LlamaBackbone, options: BackboneOptions) -> None:
        super().__init__()
        self.inner = inner
        self.options = options
        self.hidden_size = inner.hidden_size
        self.vocab_size = inner.vocab_size
        self._lora_layers: list[nn.Module] = []
        if options.freeze or options.lora is not None:
            inner.requires_grad_(False)
        if options.train_top_layers:
            _unfreeze_top(inner.model, options.train_top_layers)
        if options.lora is not None:
            self._lora_layers = _inject_lora(inner.model, options.lora)
            self._set_adapters(False)
        if options.gradient_checkpointing:
            _enable_checkpointing(inner.model)

    @property
    def max_positions(self) -> int | None:
        return self.inner.max_positions

    def _set_adapters(self, enabled: bool) -> None:
        # peft's enable_adapters() also flips requires_grad, which would stop the adapters from
        # training (they are used in WRITE only but trained by the outer optimiser): set the flag.
        for layer in self._lora_layers:
            layer._disable_adapters = not enabled

    @contextmanager
    def write_mode(self) -> Iterator[None]:
        """Inside: LoRA adapters on (WRITE). Outside: off (READ). A no-op without LoRA. Nested
        uses leave the adapters on until the outermost one exits."""
        if not self._lora_layers:
            yield
            return
        was_on = not self._lora_layers[0]._disable_adapters
        self._set_adapters(True)
        try:
            yield
        finally:
            self._set_adapters(was_on)

    @contextmanager
    def full_precision(self) -> Iterator[None]:
        """Inside: the decoder computes in fp32 even if `bf16` is on (or "auto" resolves to on)."""
        options = self.options
        self.options = replace(options, bf16=False)
        try:
            yield
        finally:
            self.options = options

    def uses_bf16(self, device_type: str) -> bool:
        """Whether the decoder runs under bf16 autocast on this device kind (resolves "auto")."""
        if self.options.bf16 == "auto":
            return fast_bf16(device_type)
        return bool(self.options.bf16)

    def _autocast(self, x: Tensor) -> Any:
        if not self.uses_bf16(x.device.type):
            return nullcontext()
        return torch.autocast(x.device.type, dtype=torch.bfloat16)

    def embed(self, ids: Tensor) -> Tensor:
        return self.inner.embed(ids)

    def hidden(self, embeds: Tensor) -> Tensor:
        with self._autocast(embeds):
            out = self.inner.hidden(embeds)
        return out.float() if self.uses_bf16(embeds.device.type) else out

    def logits(self, hidden: Tensor) -> Tensor:
        with self._autocast(hidden):
            return self.inner.logits(hidden)

    def head_weight(self) -> Tensor:
        return self.inner.head_weight()

    def decodes_incrementally(self) -> bool:
        return incremental_decoding(self.inner) is not None

    def prefill(self, embeds: Tensor) -> tuple[Tensor, Any]:
        return self._cached(embeds, None)

    def extend(self, embeds: Tensor, cache: Any) -> tuple[Tensor, Any]:
        return self._cached(embeds, cache)

    def _cached(self, embeds: Tensor, cache: Any) -> tuple[Tensor, Any]:
        """The inner model's incremental decoding under the same autocast as `hidden`."""
        inner = incremental_decoding(self.inner)
        assert inner is not None, "decodes_incrementally() said no"
        with self._autocast(embeds):
            out, grown = inner.prefill(embeds) if cache is None else inner.extend(embeds, cache)
        return (out.float() if self.uses_bf16(embeds.device.type) else out), grown

    def decoder_layers(self) -> nn.ModuleList:
        """The inner model's decoder blocks (for methods that hook into layers, e.g. ARMT)."""
        if self.options.gradient_checkpointing:
            # A checkpointed block is recomputed during backward, after a method's per-layer hooks
            # have been removed, so its recomputation would differ from its forward.
            raise TypeError("per-layer hooks and gradient_checkpointing do not combine: turn one of them off")
        return self.inner.decoder_layers()

    def supports_double_backward(self) -> bool:
        return self.inner.supports_double_backward()

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "options": asdict(self.options)}


def _unfreeze_top(model: nn.Module, k: int) -> None:
    """Make the last k decoder layers and the final norm trainable (Llama-style `layers` / `norm`)."""
    decoder = model.base_model
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise ValueError(f"{type(decoder).__name__} has no `layers` list: train_top_layers is unsupported")
    if k > len(layers):
        raise ValueError(f"train_top_layers={k} but the model has {len(layers)} layers")
    for layer in list(layers)[-k:]:
        layer.requires_grad_(True)
    norm = getattr(decoder, "norm", None)
    if norm is not None:
        norm.requires_grad_(True)


def _enable_checkpointing(model: nn.Module) -> None:
    # Non-reentrant checkpointing records a normal graph on recomputation, so create_graph works;
    # the reentrant variant runs backward inside a custom Function that has no double backward.
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        raise ValueError(f"{type(model).__name__} does not support gradient checkpointing")


def _inject_lora(model: nn.Module, lora: LoraOptions) -> list[nn.Module]:
    """Add LoRA adapters in place (no PeftModel wrapper) and return the adapted layers."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError as err:
        raise ModuleNotFoundError("write-only LoRA needs peft: pip install -e '.[pretrained]'") from err
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
    )
    inject_adapter_in_model(config, model)
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    if not layers:
        raise ValueError(f"no module matched lora.target_modules={lora.target_modules}")
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name)
    return layers


def adapt(backbone: HFBackbone | LlamaBackbone, spec: dict[str, Any]) -> HFBackbone | LlamaBackbone | AdaptedBackbone:
    """Apply the option keys of a backbone spec; returns the backbone unchanged when none is set."""
    options = BackboneOptions(**{k: spec[k] for k in OPTION_KEYS if k in spec})
    return AdaptedBackbone(backbone, options) if options.any() else backbone
