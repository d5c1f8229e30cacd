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


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_the_llama_cache_gives_the_hidden_states_of_a_full_forward(dtype, atol):
    backbone = tiny_model(dtype=dtype).backbone
    decoder = incremental_decoding(backbone)
    assert decoder is backbone
    torch.manual_seed(1)
    embeds = torch.randn(3, 21, backbone.hidden_size, dtype=dtype)
    with torch.no_grad():
        full = backbone.hidden(embeds)  # (B, T, D)
        hidden, cache = decoder.prefill(embeds[:, :5])
        parts = [hidden]
        hidden, cache = decoder.extend(embeds[:, 5:9], cache)  # several new positions at once
        parts.append(hidden)
        for t in range(9, 21):  # then one at a time, as a greedy decode runs
            hidden, cache = decoder.extend(embeds[:, t : t + 1], cache)
            parts.append(hidden)
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=0, atol=atol)
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


def test_only_a_backbone_that_declares_it_decodes_incrementally():
    backbone = tiny_model().backbone
    assert incremental_decoding(backbone) is backbone
    # a wrapper (bf16 autocast) keeps the uncached path: it does not declare the capability
    assert incremental_decoding(AdaptedBackbone(backbone, BackboneOptions(bf16=True))) is None


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
