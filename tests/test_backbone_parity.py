"""The built-in decoder in float32 against its own float64 copy: outputs, first-order gradients and
second-order (Hessian-vector) gradients agree to float32 accuracy, for every attention kernel with a
double backward."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY

from gradmem.backbones import LlamaBackbone, LlamaConfig


def derivatives(model: LlamaBackbone, x: torch.Tensor, w: torch.Tensor, u: torch.Tensor):
    """hidden(x); d<hidden, w>/dx; d<d<hidden, w>/dx, u>/d(x, weights) (what meta-training needs)."""
    x = x.clone().requires_grad_()
    h = model.hidden(x)
    (g,) = torch.autograd.grad((h * w).sum(), x, create_graph=True)
    second = torch.autograd.grad((g * u).sum(), [x, *model.parameters()], allow_unused=True)
    return h, g, second


@pytest.mark.parametrize("attention", ["math", "sdpa_explicit", "sdpa_hvp"])
def test_float32_matches_float64_reference(attention):
    torch.manual_seed(0)
    model = LlamaBackbone(LlamaConfig(**{**TINY, "attention": attention}))
    reference = copy.deepcopy(model).double()
    x, w, u = (torch.randn(3, 19, TINY["hidden_size"], dtype=torch.float64) for _ in range(3))
    ours = derivatives(model, x.float(), w.float(), u.float())
    ref = derivatives(reference, x, w, u)
    for name, a, b in (("hidden", ours[0], ref[0]), ("first order", ours[1], ref[1])):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5, msg=name)
    names = ["input"] + [n for n, _ in model.named_parameters()]
    for name, a, b in zip(names, ours[2], ref[2]):
        if b is None:
            assert a is None
            continue
        error, scale = (a.double() - b).abs().max().item(), b.abs().max().item()
        assert error <= 1e-4 * scale + 1e-7, f"second order, {name}: error {error:.3g}, scale {scale:.3g}"
