"""Parity with the authors' reference code (GradMemGPT) on its own numbers.

tests/fixtures/reference/ holds, for ten cases, what the reference implementation computed in
float64 on a tiny Hugging Face Llama (README there): WRITE losses, inner gradient norms, the
written memory, the READ and outer losses and the outer gradient of every trained tensor. With
`reference_compat` every case must agree to float64 rounding (same HF eager attention). With
gradmem's defaults the cases where gradmem departs on purpose must differ, so each documented
difference (docs/reference_parity.md) stays pinned by a test.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from gradmem import HFBackbone, MemoryModel, build_method
from gradmem.core.batch import Batch, TokenBatch
from gradmem.run.reference_compat import reference_compat

FIXTURE = Path(__file__).parent / "fixtures" / "reference" / "gradmem_reference_cases"
META = json.loads(FIXTURE.with_suffix(".json").read_text())
CASES = {case["id"]: case for case in META["cases"]}
# HF eager attention takes its softmax in float32 (fixture README), so the last bits of every number
# follow the CPU's float32 exp: the fixture was made on an AVX-512 CPU, where gradmem agrees to float64
# rounding. Elsewhere (AVX2-only CPUs, e.g. AMD Zen 3) that float32 step rounds differently and the
# second-order chain carries it to ~1e-5 relative (measured: 4e-6 to 3.2e-5 over the ten cases), so
# the agreement is checked at 1e-4 there and a documented difference smaller than that is not pinned.
SAME_FLOAT32_EXP = torch.backends.cpu.get_cpu_capability().startswith("AVX512")
RTOL, ATOL = (1e-10, 1e-12) if SAME_FLOAT32_EXP else (1e-4, 1e-6)
SAME, DIFFERENT = (1e-9, 1e-8) if SAME_FLOAT32_EXP else (1e-4, 1e-1)  # max_rel_diff bounds
# Where gradmem's default differs from the reference on purpose: case id -> the option that differs.
DIFFERS_BY_DEFAULT = {"v": "clip_eps", "vii": "adam_reference", "viii": "inner_loss_steps", "x": "read_loss"}


@pytest.fixture(scope="module")
def tensors() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE.with_suffix(".safetensors")))


def method_spec(settings: dict[str, Any]) -> dict[str, Any]:
    """The case's settings as a gradmem method spec (gradmem's names)."""
    second_k = settings["second_order_last_k_steps"]
    return {
        "name": "gradmem",
        "num_memory": settings["num_memory"],
        "projection": "linear" if settings["projection"] else "none",
        "write_head": settings["write_head"],
        "inner_loss_weight": settings["inner_loss_weight"],
        "write": {
            "steps": settings["K"],
            "grad_mode": settings["grad_mode"],
            "second_order_steps": second_k if settings["grad_mode"] == "second" and second_k < settings["K"] else None,
            "optim": {
                "name": settings["optimizer"],
                "lr": settings["inner_lr"],
                "clip_value": settings["clip_value"],
                "clip_norm": settings["clip_norm"],
            },
        },
    }


def build(case: dict[str, Any], tensors: dict[str, torch.Tensor], compat: bool) -> MemoryModel:
    """The fixture's Llama and GradMem parameters under the case's settings."""
    from transformers import LlamaConfig, LlamaForCausalLM

    skip = {"model_type", "architectures", "attn_implementation", "torch_dtype"}
    config = LlamaConfig(**{k: v for k, v in META["model_config"].items() if k not in skip})
    config._attn_implementation = "eager"
    llama = LlamaForCausalLM(config).double()
    llama.load_state_dict({k[len("backbone.") :]: v for k, v in tensors.items() if k.startswith("backbone.")})
    spec = {"task": {"name": "kv"}, "train": {}, "method": method_spec(case["settings"])}
    if compat:
        spec = reference_compat(spec, pad_id=META["batches"]["batch"]["pad_id"])
    backbone = HFBackbone(llama)
    method = dict(spec["method"])
    model = MemoryModel(
        backbone,
        build_method(method.pop("name"), backbone, method),
        read_loss=spec["train"].get("read_loss", "example"),
    ).double()
    with torch.no_grad():
        model.method.memory0.copy_(tensors["memory0"])
        if model.method.projection is not None:
            model.method.projection.copy_(tensors["projection.weight"])
        if model.method.write_head is not None:
            model.method.write_head.weight.copy_(tensors["write_head.weight"])
    return model


def fixture_batch(tensors: dict[str, torch.Tensor], name: str) -> Batch:
    part = lambda key: TokenBatch(tensors[f"{name}.{key}_ids"], tensors[f"{name}.{key}_lengths"])  # noqa: E731
    target = part("target")
    return Batch(context=part("context"), query=part("query"), target=target, answer_len=target.lengths)


def gradients(model: MemoryModel) -> dict[str, torch.Tensor]:
    """Outer gradients under the fixture's names (a tensor without a gradient counts as zeros)."""
    method = model.method
    named = {
        "memory0": method.memory0,
        "projection.weight": method.projection,
        "projection.bias": method.projection_bias,
        "write_head.weight": None if method.write_head is None else method.write_head.weight,
    }
    named.update({f"backbone.{n}": p for n, p in model.backbone.model.named_parameters()})
    return {n: torch.zeros_like(p) if p.grad is None else p.grad for n, p in named.items() if p is not None}


def run_case(case: dict[str, Any], tensors: dict[str, torch.Tensor], compat: bool) -> dict[str, torch.Tensor]:
    """Everything the fixture stores for a case, computed by gradmem, under the fixture's keys."""
    model = build(case, tensors, compat)
    out = model(fixture_batch(tensors, case["batch"]))
    out.loss.backward()
    stats = out.memory.stats
    got = {
        "write_losses": stats.losses,
        "inner_grad_norms": stats.grad_norms,
        "prefix": out.memory.prefix.detach(),
        "read_loss": out.read.loss.detach(),
        "outer_loss": out.loss.detach(),
    }
    got.update({f"grad.{n}": g for n, g in gradients(model).items()})
    return got


def expected(case: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    prefix = case["key_prefix"] + "."
    want = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    # The fixture stores the memory before the projection; READ sees M W^T + b (b = 0 in the fixture).
    memory = want.pop("memory_k")
    want["prefix"] = memory @ tensors["projection.weight"].T if case["settings"]["projection"] else memory
    return want


def max_rel_diff(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    return max(float(((got[k] - v).abs() / (v.abs() + ATOL / RTOL)).max()) for k, v in want.items())


@pytest.mark.parametrize("case_id", list(CASES))
def test_reference_compat_matches_the_reference_code(case_id: str, tensors: dict[str, torch.Tensor]) -> None:
    case = CASES[case_id]
    got, want = run_case(case, tensors, compat=True), expected(case, tensors)
    assert set(want) <= set(got), f"not computed: {set(want) - set(got)}"
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=RTOL, atol=ATOL, msg=lambda m: f"case {case_id}, {key}: {m}")


@pytest.mark.parametrize("case_id", list(CASES))
def test_defaults_agree_except_where_documented(case_id: str, tensors: dict[str, torch.Tensor]) -> None:
    case = CASES[case_id]
    want = expected(case, tensors)
    want.pop("grad.projection.bias", None)  # the default projection has no bias (checked above under compat)
    diff = max_rel_diff(run_case(case, tensors, compat=False), want)
    if case_id == "v" and not SAME_FLOAT32_EXP:
        pytest.skip("clip_eps moves case v by ~4e-5, inside this CPU's float32-softmax noise")
    if case_id in DIFFERS_BY_DEFAULT:
        assert diff > DIFFERENT, f"case {case_id}: the default was expected to differ by {DIFFERS_BY_DEFAULT[case_id]}"
    else:
        assert diff < SAME, f"case {case_id}: the default differs from the reference by {diff:.2e}"


def test_ignore_context_id_drops_those_tokens_from_the_write_loss(tensors: dict[str, torch.Tensor]) -> None:
    """The reference masks context tokens by id: a real token equal to the pad id leaves the loss."""
    case = CASES["i"]
    batch = fixture_batch(tensors, "batch")
    context = batch.context.ids.clone()
    context[0, 3] = 0  # a real token that happens to equal the pad id (pad = eos models)
    batch = Batch(TokenBatch(context, batch.context.lengths), batch.query, batch.target, batch.answer_len)
    losses = {}
    for compat in (False, True):
        model = build(case, tensors, compat)
        with torch.no_grad():
            losses[compat] = model.write(batch.context).stats.losses[0]
    assert float((losses[True][0] - losses[False][0]).abs()) > 1e-3  # example 0 lost one token from its mean
    torch.testing.assert_close(losses[True][1:], losses[False][1:], rtol=0, atol=0)  # the others are untouched
