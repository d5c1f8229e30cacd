"""Incremental decoding (a KV cache): the built-in decoder's cached hidden states equal a full
forward, and a greedy reconstruction decodes the same tokens with and without the cache."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from gradmem.backbones.adapted import AdaptedBackbone, BackboneOptions
from gradmem.core.backbone import incremental_decoding
from gradmem.core.errors import Overloaded
from gradmem.serve.fidelity import greedy_reconstruction


def cached_hidden(decoder, embeds: torch.Tensor) -> tuple[torch.Tensor, object]:
    """Hidden states of `embeds` run as a greedy decode runs them (a prefix of 5, then a chunk of
    4, then one position at a time), and the cache after them."""
    hidden, cache = decoder.prefill(embeds[:, :5])
    parts = [hidden]
    hidden, cache = decoder.extend(embeds[:, 5:9], cache)
    parts.append(hidden)
    for t in range(9, embeds.shape[1]):
        hidden, cache = decoder.extend(embeds[:, t : t + 1], cache)
        parts.append(hidden)
    return torch.cat(parts, 1), cache


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_the_llama_cache_gives_the_hidden_states_of_a_full_forward(dtype, atol):
    backbone = tiny_model(dtype=dtype).backbone
    decoder = incremental_decoding(backbone)
    assert decoder is backbone
    torch.manual_seed(1)
    embeds = torch.randn(3, 21, backbone.hidden_size, dtype=dtype)
    with torch.no_grad():
        full = backbone.hidden(embeds)  # (B, T, D)
        cached, cache = cached_hidden(decoder, embeds)
    torch.testing.assert_close(cached, full, rtol=0, atol=atol)
    cfg = backbone.config
    head_dim = cfg.hidden_size // cfg.num_heads
    assert len(cache) == cfg.num_layers
    assert all(k.shape == v.shape == (3, cfg.num_heads, 21, head_dim) for k, v in cache)


def test_the_cache_keeps_to_the_window():
    backbone = tiny_model().backbone
    window = backbone.max_positions
    _, cache = backbone.prefill(torch.randn(1, window, backbone.hidden_size))
    with pytest.raises(ValueError, match="max_positions"):
        backbone.extend(torch.randn(1, 1, backbone.hidden_size), cache)


@pytest.mark.parametrize(("bf16", "atol"), [(False, 1e-5), (True, 0.1)])
def test_a_wrapped_backbone_decodes_incrementally_under_its_own_autocast(bf16, atol):
    adapted = AdaptedBackbone(tiny_model().backbone, BackboneOptions(bf16=bf16))
    decoder = incremental_decoding(adapted)
    assert decoder is adapted
    torch.manual_seed(1)
    embeds = torch.randn(2, 14, adapted.hidden_size)
    with torch.no_grad():
        full, (cached, _) = adapted.hidden(embeds), cached_hidden(decoder, embeds)
    assert cached.dtype == full.dtype == torch.float32
    torch.testing.assert_close(cached, full, rtol=0, atol=atol)  # bf16: the same roundings, other orders


HF_CONFIGS = {
    "llama": dict(intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "gpt2": dict(n_layer=2, n_head=4, n_positions=64),
    # Gemma 3 (a packaged model's family): sliding-window layers whose window the decode crosses
    "gemma3_text": dict(
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        num_hidden_layers=3,
        sliding_window=4,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
    ),
}


@pytest.mark.parametrize("model_type", sorted(HF_CONFIGS))
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_a_hugging_face_decoder_decodes_incrementally_through_its_own_cache(model_type, attention):
    from transformers import AutoConfig

    from gradmem.backbones.hf import HFBackbone

    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, vocab_size=50, hidden_size=32, **HF_CONFIGS[model_type])
    backbone = HFBackbone.from_config(config, attn_implementation=attention).double().eval()
    decoder = incremental_decoding(backbone)
    assert decoder is backbone
    embeds = torch.randn(3, 14, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(cached_hidden(decoder, embeds)[0], backbone.hidden(embeds), rtol=0, atol=1e-10)


def test_models_whose_cache_would_be_wrong_re_run_the_whole_sequence():
    from transformers import AutoConfig

    from gradmem.backbones.hf import HFBackbone
    from gradmem.backbones.mamba import mamba_backbone
    from gradmem.core.attention import HF_KERNELS

    config = AutoConfig.for_model("llama", vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4)
    for kernel in HF_KERNELS:  # gradmem's kernels align the causal mask top-left
        assert incremental_decoding(HFBackbone.from_config(config, attn_implementation=kernel)) is None
    mamba = mamba_backbone(vocab_size=50, hidden_size=16, state_size=4, num_hidden_layers=1)
    assert incremental_decoding(mamba) is None  # a state-space model keeps no keys and values
    assert incremental_decoding(AdaptedBackbone(mamba, BackboneOptions(bf16=False))) is None


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_reconstruction_decodes_the_same_tokens_with_and_without_the_cache(dtype):
    model = tiny_model(dtype=dtype).eval()
    torch.manual_seed(2)
    blocks = 3 * torch.randn(4, model.method.prefix_size(), model.backbone.hidden_size, dtype=dtype)
    cached = greedy_reconstruction(model, blocks, 40)
    uncached = greedy_reconstruction(model, blocks, 40, cache=False)
    assert cached.shape == (4, 40)
    assert torch.equal(cached, uncached)
    assert len(set(cached.flatten().tolist())) > 3  # a decode that varies, not one repeated token


def test_a_cached_reconstruction_asks_before_every_token():
    model = tiny_model().eval()
    blocks = torch.randn(2, model.method.prefix_size(), model.backbone.hidden_size)
    asked: list[int] = []

    def stop_after(calls: int):
        def should_stop() -> bool:
            asked.append(1)
            return len(asked) > calls

        return should_stop

    assert greedy_reconstruction(model, blocks, 7, stop_after(100)).shape == (2, 7)
    assert len(asked) == 7
    asked.clear()
    with pytest.raises(Overloaded, match="deadline"):
        greedy_reconstruction(model, blocks, 7, stop_after(3))
    assert len(asked) == 4  # stopped before its fourth token
