"""Mamba as a baseline: a Hugging Face `MambaForCausalLM` built from a config, wrapped by HFBackbone.

A state-space model needs no memory method of its own: run with the `full_context` method, the
query is read after the context, so everything the model knows about the context is its recurrent
state at the context's end. That state has a fixed size, which `mamba_state_floats` computes the
way the paper's Table 6 counts it. Without the optional `mamba_ssm` / `causal_conv1d` kernels,
transformers runs its reference PyTorch path (slower, but exact; it works on CPU).
"""

from __future__ import annotations

from typing import Any

from gradmem.backbones.hf import HFBackbone


def mamba_backbone(**config: Any) -> HFBackbone:
    """A randomly initialised Mamba LM from `transformers.MambaConfig` fields (vocab_size, hidden_size,
    state_size, num_hidden_layers, expand, conv_kernel, ...)."""
    from transformers import MambaConfig, MambaForCausalLM

    return HFBackbone(MambaForCausalLM(MambaConfig(**config)))


def mamba_state_floats(config: Any) -> int:
    """Floats of recurrent state per sequence: per layer an SSM state (d_inner x d_state) plus the
    convolution's last d_conv - 1 inputs (d_inner x (d_conv - 1)); d_inner = expand x width.

    `config` is a MambaConfig or its dict. (transformers' cache stores d_conv inputs per layer, one
    more than the recurrence needs.)
    """
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    d_inner = get("intermediate_size") or get("expand", 2) * get("hidden_size")
    layers = get("num_hidden_layers")
    return int(layers * d_inner * (get("state_size", 16) + get("conv_kernel", 4) - 1))


# model_type -> per-sequence recurrent state in floats, for backbones whose state does not grow
RECURRENT_STATE_FLOATS = {"mamba": mamba_state_floats}
