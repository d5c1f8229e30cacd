"""The inner-loss term (the WRITE loss added to the training loss) in every grad mode.

It used to crash ("backward through the graph a second time") whenever a WRITE step was not
second order: the inner gradient freed the step's graph and the term then reused its loss.
"""

from __future__ import annotations

import pytest
import torch
from conftest import kv_batch, tiny_model

WEIGHT = 0.5
MODES = {  # name -> write config
    "second": {"steps": 2, "grad_mode": "second"},
    "first": {"steps": 2, "grad_mode": "first"},
    "none": {"steps": 2, "grad_mode": "none"},
    "second_last_1_of_3": {"steps": 3, "grad_mode": "second", "second_order_steps": 1},
}


def training_step(write: dict, weight: float, steps: str = "all"):
    model = tiny_model(
        dtype=torch.float64, inner_loss_weight=weight, inner_loss_steps=steps, write={**write, "optim": {"lr": 1.0}}
    )
    out = model(kv_batch())
    out.loss.backward()
    return model, out


@pytest.mark.parametrize("mode", list(MODES))
def test_inner_loss_trains_in_every_grad_mode(mode: str) -> None:
    model, out = training_step(MODES[mode], WEIGHT)
    losses = out.memory.stats.losses  # (K, B), before each step
    torch.testing.assert_close(out.loss - out.read.loss, WEIGHT * losses.mean(), rtol=1e-12, atol=0)
    # The WRITE head is used only to write, so any gradient it has comes through the write path.
    assert model.method.write_head.weight.grad is not None
    assert float(model.method.write_head.weight.grad.abs().sum()) > 0


@pytest.mark.parametrize("mode", ["first", "none"])
def test_without_the_term_the_write_head_gets_no_gradient_when_not_second_order(mode: str) -> None:
    # The contrast that makes the test above meaningful: under first order / none, READ alone
    # cannot reach the WRITE head, so its gradient there came from the inner-loss term.
    model, _ = training_step(MODES[mode], 0.0)
    grad = model.method.write_head.weight.grad
    assert grad is None or float(grad.abs().sum()) == 0


def test_last_step_variant_uses_the_last_pre_update_loss() -> None:
    _, out = training_step(MODES["second"], WEIGHT, steps="last")
    losses = out.memory.stats.losses
    torch.testing.assert_close(out.loss - out.read.loss, WEIGHT * losses[-1].mean(), rtol=1e-12, atol=0)
    assert float((losses[-1].mean() - losses.mean()).abs()) > 1e-6  # the two variants really differ here


def test_inner_loss_gradient_matches_finite_differences() -> None:
    """d(w * mean WRITE loss)/d(M0) through a second-order write is the exact derivative."""
    model = tiny_model(
        dtype=torch.float64, inner_loss_weight=WEIGHT, write={"steps": 2, "grad_mode": "second", "optim": {"lr": 1.0}}
    )
    batch = kv_batch()

    def aux() -> torch.Tensor:
        memory = model.write(batch.context)
        return memory.aux_loss

    aux().backward()
    grad = model.method.memory0.grad[0, :3].clone()
    eps = 1e-6
    memory0 = model.method.memory0.data  # nudged in place; aux() needs gradients on to build the term
    for j in range(3):
        memory0[0, j] += eps
        plus = float(aux().detach())
        memory0[0, j] -= 2 * eps
        minus = float(aux().detach())
        memory0[0, j] += eps
        assert abs((plus - minus) / (2 * eps) - float(grad[j])) < 1e-6 * max(1.0, abs(float(grad[j])))
