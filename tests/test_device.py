"""`--device` and the device helpers, on a machine without a GPU: names resolve or fail clearly,
the trainer puts everything on the chosen device, random state and out-of-memory are handled."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from conftest import kv_batch, tiny_run_spec

from gradmem.cli.main import main
from gradmem.core.device import out_of_memory_as_error, resolve_device, rng_state, set_rng_state
from gradmem.core.errors import ConfigError, OutOfDeviceMemory
from gradmem.run.build import build_model
from gradmem.training.trainer import Trainer

needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the errors of a machine without CUDA")


def test_auto_is_cuda_when_available_else_the_cpu():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("name", ["tpu", "gpu0", "", "cuda:x", "meta"])
def test_a_device_torch_does_not_know_or_gradmem_does_not_run_on_is_refused(name):
    with pytest.raises(ConfigError, match="auto, cpu, cuda"):
        resolve_device(name)


@needs_no_gpu
def test_cuda_without_a_gpu_says_so():
    with pytest.raises(ConfigError, match="CUDA is not available.*use cpu"):
        resolve_device("cuda:0")


@needs_no_gpu
@pytest.mark.parametrize("command", [["eval", "CKPT"], ["write", "CKPT"], ["ask", "CKPT", "ID"], ["serve", "CKPT"]])
def test_every_model_command_refuses_cuda_without_a_gpu_before_loading(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--device", "cuda"])
    assert exit_info.value.code == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_train_records_the_device_in_the_spec_and_a_bad_one_fails_before_training(tmp_path, capsys):
    config = tmp_path / "spec.json"
    config.write_text(json.dumps(tiny_run_spec(steps=2, batch_size=2, eval_every=2, eval_examples=4)))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run"), "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["device"] == "cpu" and "peak_gpu_mib" not in summary
    saved = json.loads((tmp_path / "run" / "last" / "spec.json").read_text())
    assert saved["train"]["device"] == "cpu"
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "bad"), "--set", "train.device=tpu"]) == 2
    assert "auto, cpu, cuda or cuda:N" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "last").exists()


@needs_no_gpu
def test_a_run_saved_on_cuda_resumes_on_the_cpu_only_when_asked(tmp_path, capsys):
    config = tmp_path / "spec.json"
    config.write_text(json.dumps(tiny_run_spec(steps=2, batch_size=2, eval_every=2, eval_examples=4)))
    run = str(tmp_path / "run")
    assert main(["train", "--config", str(config), "--out", run, "--device", "cpu"]) == 0
    spec_path = tmp_path / "run" / "last" / "spec.json"  # as a GPU run would have saved it
    spec = json.loads(spec_path.read_text())
    spec["train"]["device"] = "cuda"
    spec_path.write_text(json.dumps(spec))
    manifest = tmp_path / "run" / "last" / "manifest.json"  # keep the checksum true: only the device changed
    sums = json.loads(manifest.read_text())
    sums["sha256"]["spec.json"] = hashlib.sha256(spec_path.read_bytes()).hexdigest()
    manifest.write_text(json.dumps(sums))
    capsys.readouterr()
    assert main(["train", "--out", run, "--resume", "--set", "train.steps=4"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert main(["train", "--out", run, "--resume", "--set", "train.steps=4", "--device", "cpu"]) == 0


def test_trainer_from_spec_moves_the_model_to_the_device(tmp_path):
    spec = tiny_run_spec(steps=1, device="cpu")
    model = build_model(spec).double()  # any starting state: from_spec only moves it
    trainer = Trainer.from_spec(model, spec, tmp_path)
    assert trainer.device == torch.device("cpu")


def test_out_of_memory_becomes_an_error_naming_the_batch_size(tmp_path, monkeypatch):
    spec = tiny_run_spec(steps=3, batch_size=8, device="cpu")
    trainer = Trainer.from_spec(build_model(spec), spec, tmp_path)

    def no_memory(batch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer, "_gradients", no_memory)
    with pytest.raises(OutOfDeviceMemory, match="batch_size 8.*lower train.batch_size.*Tried to allocate"):
        trainer.train()
    assert not (tmp_path / "last").exists()  # nothing saved from a step that did not happen


def test_out_of_memory_helper_leaves_other_errors_alone():
    with pytest.raises(ValueError, match="other"), out_of_memory_as_error("x", "y"):
        raise ValueError("other")


def test_random_state_round_trips_and_old_checkpoints_still_restore():
    state = rng_state()
    first = torch.rand(3)
    set_rng_state(state)
    assert torch.equal(torch.rand(3), first)
    set_rng_state(state["cpu"])  # the bare CPU tensor older trainer.pt files hold
    assert torch.equal(torch.rand(3), first)


def _bf16_model(setting):
    spec = tiny_run_spec()
    spec["backbone"]["bf16"] = setting
    torch.manual_seed(0)
    return build_model(spec)


def test_bf16_auto_follows_the_cpu_features(monkeypatch):
    import gradmem.core.device as device

    batch = kv_batch(n=4, pairs=2)
    model = _bf16_model("auto")
    want = None
    for flags, on in (([], False), (["amx_bf16"], True), (["avx512_bf16"], True)):
        monkeypatch.setattr(device, "cpu_bf16_flags", lambda flags=flags: flags)
        device.fast_bf16.cache_clear()
        assert model.backbone.uses_bf16("cpu") is on
        with torch.no_grad():
            got = model(batch).loss
        want = got if want is None else want  # the fp32 loss, from the CPU without bf16 features
        assert torch.equal(got, want) != on  # bf16 rounding only where the CPU has the features
        note = device.precision_note("auto", torch.device("cpu"))
        assert note.startswith(f"bf16 autocast {'on' if on else 'off'} (auto: ")
    device.fast_bf16.cache_clear()


def test_bf16_takes_true_false_or_auto_only():
    with pytest.raises(ValueError, match='true, false or "auto"'):
        _bf16_model("yes")
