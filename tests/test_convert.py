"""The built-in decoder converted to a Hugging Face LlamaForCausalLM computes the same function:
hidden states, logits and GradMem's second-order meta-gradients agree in float64."""

from __future__ import annotations

import torch
from conftest import TINY, kv_batch

from gradmem.backbones import LlamaBackbone, LlamaConfig
from gradmem.backbones.convert import hf_state_dict, to_hf
from gradmem.methods import build_method
from gradmem.methods.model import MemoryModel

# transformers' Llama takes RMSNorm statistics, rotary angles and the eager softmax in float32 even
# for float64 weights, so agreement is to float32 rounding of O(1) activations.
ATOL = 1e-6


def backbone(seed: int = 0, **overrides) -> LlamaBackbone:
    torch.manual_seed(seed)
    model = LlamaBackbone(LlamaConfig(**{**TINY, **overrides})).double()
    with torch.no_grad():  # non-trivial norms and larger weights, so a convention mismatch shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model


def test_hidden_states_and_logits_match():
    ours = backbone()
    theirs = to_hf(ours)
    assert next(theirs.parameters()).dtype == torch.float64
    x = torch.randn(3, 21, TINY["hidden_size"], dtype=torch.float64)
    h_ours, h_theirs = ours.hidden(x), theirs.hidden(x)
    assert h_ours.abs().max() > 0.5
    torch.testing.assert_close(h_theirs, h_ours, rtol=0, atol=ATOL)
    torch.testing.assert_close(theirs.logits(h_ours), ours.logits(h_ours), rtol=0, atol=1e-12)
    ids = torch.randint(0, TINY["vocab_size"], (2, 5))
    torch.testing.assert_close(theirs.embed(ids), ours.embed(ids), rtol=0, atol=0)


def test_tied_embeddings_convert():
    ours = backbone(tie_embeddings=True)
    theirs = to_hf(ours)
    x = torch.randn(2, 7, TINY["hidden_size"], dtype=torch.float64)
    torch.testing.assert_close(theirs.hidden(x), ours.hidden(x), rtol=0, atol=ATOL)
    assert torch.equal(theirs.head_weight(), ours.head_weight())


def test_second_order_meta_gradients_match():
    ours = backbone()
    theirs = to_hf(ours)
    models = []
    for bb in (ours, theirs):
        torch.manual_seed(1)
        models.append(MemoryModel(bb, build_method("gradmem", bb, {"num_memory": 3})).double())
    models[1].method.load_state_dict(models[0].method.state_dict())
    batch = kv_batch(n=3, pairs=2)
    for m in models:
        m(batch).loss.backward()
    # the method's own parameters (M0, projection, write head) and the backbone's, under HF names
    for (name, p), q in zip(models[0].method.named_parameters(), models[1].method.parameters()):
        assert_close_scaled(q.grad, p.grad, name)
    grads = {n: p.grad for n, p in ours.named_parameters()}
    hf_grads = {n: p.grad for n, p in theirs.model.named_parameters()}
    for name, ref in hf_state_dict_of(grads, ours).items():
        assert_close_scaled(hf_grads[name], ref, name)


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, name: str, rel: float = 1e-5) -> None:
    """Max error within `rel` of the tensor's largest entry (float32 rounding inside transformers)."""
    error = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert scale > 0 and error <= rel * scale, f"{name}: max error {error:.3g} vs scale {scale:.3g}"


def hf_state_dict_of(grads: dict[str, torch.Tensor], ours: LlamaBackbone) -> dict[str, torch.Tensor]:
    """Map built-in gradients to HF names by converting a copy whose weights are the gradients."""
    clone = LlamaBackbone(ours.config).double()
    with torch.no_grad():
        for name, p in clone.named_parameters():
            p.copy_(grads[name])
    return hf_state_dict(clone)
