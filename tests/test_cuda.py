"""gradmem on a CUDA GPU: the same meta-gradient as the CPU, the compiled and bf16 steps, a short
training run, checkpoints that cross devices and the serving engine.

Marked `cuda` and skipped where torch sees no GPU; the prepared GPU script (scripts/gpu_run.py)
runs them with `-m cuda`. `GRADMEM_CUDA_TESTS_DEVICE=cpu` runs the same tests on the CPU (a dry run
of their code, compiled steps with the "eager" backend), which is how CI keeps them from rotting on
machines without a GPU. Models are built on the CPU with a seed and then moved, so CPU and GPU start
from the same weights.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
from conftest import kv_batch, tiny_model, tiny_run_spec

from gradmem.run.build import build_model
from gradmem.run.checkpoint import load_checkpoint, save_checkpoint
from gradmem.training.trainer import Trainer

CUDA = torch.device(os.environ.get("GRADMEM_CUDA_TESTS_DEVICE", "cuda"))
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(CUDA.type == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

WRITE_SETTINGS = {
    "second, sgd": {"steps": 2, "grad_mode": "second", "optim": {"name": "sgd", "lr": 0.5}},
    "second, adam": {"steps": 2, "grad_mode": "second", "optim": {"name": "adam", "lr": 0.05}},
    "second on the last step": {"steps": 3, "grad_mode": "second", "second_order_steps": 1},
    "first": {"steps": 2, "grad_mode": "first"},
    "none": {"steps": 2, "grad_mode": "none"},
}


def meta_gradients(model, batch) -> list[torch.Tensor]:
    """d(outer loss)/d(every trainable tensor), zeros where a tensor gets none, on the CPU."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(model(batch).loss, params, allow_unused=True)
    return [torch.zeros_like(p).cpu() if g is None else g.detach().cpu() for p, g in zip(params, grads)]


@pytest.mark.parametrize("write", list(WRITE_SETTINGS.values()), ids=list(WRITE_SETTINGS))
def test_meta_gradient_on_cuda_equals_the_cpu_in_float64(write):
    cpu = tiny_model(dtype=torch.float64, write=write)
    gpu = copy.deepcopy(cpu).to(CUDA)
    batch = kv_batch(n=4, pairs=2)
    for got, want in zip(meta_gradients(gpu, batch.to(CUDA)), meta_gradients(cpu, batch)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method, cfg", [("rmt", {"num_memory": 2, "steps": 2}), ("armt", {"num_memory": 2})])
def test_baselines_on_cuda_equal_the_cpu_in_float64(method, cfg):
    cpu = tiny_model(method, dtype=torch.float64, **cfg)
    gpu = copy.deepcopy(cpu).to(CUDA)
    batch = kv_batch(n=4, pairs=2)
    for got, want in zip(meta_gradients(gpu, batch.to(CUDA)), meta_gradients(cpu, batch)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("attention", ["sdpa_explicit", "sdpa_hvp"])
def test_double_backward_attention_kernels_on_cuda_equal_math_on_the_cpu(attention):
    """The fused-forward kernels with a hand-written differentiable backward (gradmem.core.attention),
    second order through two WRITE steps; float32, since fused SDPA kernels on CUDA have no float64."""
    from conftest import TINY

    from gradmem.backbones import LlamaBackbone, LlamaConfig
    from gradmem.methods import build_method
    from gradmem.methods.model import MemoryModel

    def model_with(kernel: str) -> MemoryModel:
        torch.manual_seed(0)
        backbone = LlamaBackbone(LlamaConfig(**TINY, attention=kernel))
        return MemoryModel(backbone, build_method("gradmem", backbone, {"num_memory": 3, "write": {"steps": 2}}))

    batch = kv_batch(n=4, pairs=2)
    want = meta_gradients(model_with("math"), batch)
    got = meta_gradients(model_with(attention).to(CUDA), batch.to(CUDA))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-3, atol=1e-5)


def test_data_parallel_training_step_on_cuda(tmp_path):
    """scripts/train_ddp.py's path in one process: NCCL on CUDA (gloo for the CPU dry run)."""
    import socket

    import torch.distributed as dist

    from gradmem.training.distributed import DataParallel

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = "nccl" if CUDA.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        spec = tiny_run_spec(steps=3, batch_size=4, log_every=1, eval_every=3, eval_examples=8)
        torch.manual_seed(0)
        device = torch.device("cuda", torch.cuda.current_device()) if CUDA.type == "cuda" else CUDA
        parallel = DataParallel.from_process_group(device)
        trainer = Trainer.from_spec(build_model(spec), spec, tmp_path, parallel=parallel, device=device)
        trainer.train()
        assert trainer.step == 3 and (tmp_path / "last").exists()
    finally:
        dist.destroy_process_group()


def test_reference_fixture_cases_hold_on_cuda():
    """The authors' code's float64 numbers (tests/fixtures/reference), computed on the GPU."""
    from safetensors.torch import load_file
    from test_reference_parity import CASES, FIXTURE, build, expected, fixture_batch, gradients

    tensors = load_file(str(FIXTURE.with_suffix(".safetensors")))
    for case_id, case in CASES.items():
        model = build(case, tensors, compat=True).to(CUDA)
        out = model(fixture_batch(tensors, case["batch"]).to(CUDA))
        out.loss.backward()
        got = {
            "write_losses": out.memory.stats.losses,
            "inner_grad_norms": out.memory.stats.grad_norms,
            "prefix": out.memory.prefix.detach(),
            "read_loss": out.read.loss.detach(),
            "outer_loss": out.loss.detach(),
            **{f"grad.{n}": g for n, g in gradients(model).items()},
        }
        for key, value in expected(case, tensors).items():
            # HF eager attention's float32 softmax rounds differently on a GPU than on the fixture's CPU:
            # the bound of a CPU without the fixture's float32 exp (test_reference_parity)
            torch.testing.assert_close(
                got[key].cpu(), value, rtol=1e-4, atol=1e-6, msg=lambda m: f"case {case_id}, {key}: {m}"
            )


def test_compiled_step_on_cuda_equals_eager():
    """Inductor generates Triton kernels here; the step must give eager autograd's gradients."""
    from gradmem.training.compiled import CompiledStep

    model = tiny_model(write={"steps": 2, "grad_mode": "second"}).to(CUDA)
    batch = kv_batch(n=8, pairs=2).to(CUDA)
    want = meta_gradients(model, batch)
    step = CompiledStep(model, backend="inductor" if CUDA.type == "cuda" else "eager")
    result = step(batch)
    assert result is not None, "the compiled step fell back to eager"
    got = [g.detach().cpu() for g in result.grads]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=2e-3, atol=2e-5)


def test_bf16_autocast_meta_gradient_points_where_fp32_does():
    from gradmem.training.compiled import without_bf16

    spec = tiny_run_spec()
    spec["method"]["write"] = {"steps": 2, "grad_mode": "second"}
    spec["backbone"]["bf16"] = True
    torch.manual_seed(0)
    model = build_model(spec).to(CUDA)
    batch = kv_batch(n=16, pairs=2).to(CUDA)
    bf16 = torch.cat([g.flatten() for g in meta_gradients(model, batch)])
    with without_bf16(model) as was_bf16:
        assert was_bf16
        fp32 = torch.cat([g.flatten() for g in meta_gradients(model, batch)])
    cosine = float(torch.nn.functional.cosine_similarity(bf16, fp32, dim=0))
    assert cosine > 0.99, cosine


def test_short_kv_training_on_cuda_lowers_the_loss_and_reports_peak_memory(tmp_path):
    spec = tiny_run_spec(steps=80, batch_size=16, lr=3e-3, warmup_steps=5, log_every=10, eval_every=80)
    torch.manual_seed(0)
    trainer = Trainer.from_spec(build_model(spec), spec, tmp_path, device=CUDA)
    assert next(trainer.model.parameters()).device.type == CUDA.type
    trainer.train()
    losses = [r["loss"] for r in trainer.history if r["kind"] == "train"]
    assert losses[-1] < 0.8 * losses[0], losses
    if CUDA.type == "cuda":
        assert all(r["peak_gpu_mib"] > 0 for r in trainer.history if r["kind"] == "train")


def test_checkpoint_trained_on_cuda_loads_and_resumes_on_the_cpu(tmp_path):
    spec = tiny_run_spec(steps=6, batch_size=4, log_every=1, eval_every=6, eval_examples=8, checkpoint_every=3)
    torch.manual_seed(0)
    trainer = Trainer.from_spec(build_model(spec), spec, tmp_path, device=CUDA)
    trainer.train()
    batch = kv_batch(n=4, pairs=2)
    with torch.no_grad():
        on_gpu = trainer.model(batch.to(CUDA)).loss.cpu()
    model, _, _ = load_checkpoint(tmp_path / "last", "cpu")
    assert all(p.device.type == "cpu" for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(batch).loss, on_gpu, rtol=1e-4, atol=1e-5)
    # the optimiser state saved on the GPU continues on the CPU, and back
    spec["train"]["steps"] = 8
    cpu_trainer = Trainer.from_spec(build_model(spec), spec, tmp_path, device="cpu")
    assert cpu_trainer.resume() and cpu_trainer.step == 6
    cpu_trainer.train()
    save_checkpoint(tmp_path / "cpu", cpu_trainer.model, spec)
    back, _, _ = load_checkpoint(tmp_path / "cpu", CUDA)
    assert all(p.device.type == CUDA.type for p in back.parameters())


def test_engine_writes_and_answers_on_cuda(tmp_path):
    pytest.importorskip("fastapi")
    from gradmem.serve.engine import Engine
    from gradmem.serve.store import MemoryStore
    from gradmem.tasks.kv import KVTask

    model = tiny_model(write={"steps": 2}).to(CUDA).eval()
    engine = Engine(model, KVTask(num_pairs=2).tokenizer, MemoryStore(tmp_path / "store"))
    (written,) = engine.write_texts(["!ab:cd!!ef:gh!|"], steps=2)
    assert engine.memory(written.id).prefix.device.type == CUDA.type
    answers = engine.ask([(written.id, "?!ab:"), (written.id, "?!ef:")], max_new_tokens=3)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    # the same memory, read on the CPU, answers the same
    cpu = Engine(copy.deepcopy(model).cpu(), KVTask(num_pairs=2).tokenizer, MemoryStore(tmp_path / "store"))
    assert cpu.ask([(written.id, "?!ab:"), (written.id, "?!ef:")], max_new_tokens=3) == answers
