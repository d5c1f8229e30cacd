"""One config path: `name` in every section (the old backbone `type` still read), the vocabulary
size filled in by the backbone builder, the typed curriculum, and peft-style checkpoints of a frozen
or LoRA backbone (trained tensors + a reference to the backbone) beside full ones."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file, save_model
from test_pretrained_options import TINY as TINY_HF
from test_pretrained_options import _save_tiny_folder

from gradmem.backbones import build_backbone
from gradmem.core.errors import CheckpointError, ConfigError
from gradmem.run.build import build_model
from gradmem.run.checkpoint import load_checkpoint, save_checkpoint
from gradmem.run.spec import LegacySpecWarning, read_spec, upgrade_spec, validate_spec
from gradmem.run.weights import BACKBONE_REF, frozen_keys
from gradmem.training.trainer import Stage, TrainConfig, Trainer, curriculum

TINY_LLAMA = {"hidden_size": 16, "num_layers": 2, "num_heads": 2, "intermediate_size": 32}
METHOD = {"name": "gradmem", "num_memory": 2, "write": {"steps": 1}}


def spec_with(backbone: dict) -> dict:
    return {"task": {"name": "kv", "num_pairs": 1}, "backbone": backbone, "method": METHOD, "train": {"steps": 2}}


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_old_backbone_type_key_is_converted_once_on_load_and_builds_the_same_model(tmp_path) -> None:
    old, new = spec_with({"type": "llama", **TINY_LLAMA}), spec_with({"name": "llama", **TINY_LLAMA})
    with pytest.warns(LegacySpecWarning, match="'type' is read as 'name'"):
        assert upgrade_spec(old) == new
    with pytest.raises(ConfigError, match="'type' is the old spelling of 'name'"):
        validate_spec(old)  # only reading a file converts: code that builds specs writes `name`
    torch.manual_seed(0)
    model_old = build_model(upgrade_spec(old))
    torch.manual_seed(0)
    assert_same_weights(model_old, build_model(new))
    save_checkpoint(tmp_path / "old", model_old, old)  # a checkpoint whose spec.json says "type"
    with pytest.warns(LegacySpecWarning):
        loaded, _, spec = load_checkpoint(tmp_path / "old")
    assert spec["backbone"]["name"] == "llama" and "type" not in spec["backbone"]  # converted on load
    assert_same_weights(model_old, loaded)
    with pytest.raises(ConfigError, match="unknown backbone 'gpt'"):
        validate_spec(spec_with({"name": "gpt"}))


def test_the_legacy_key_warning_points_at_the_callers_line(tmp_path) -> None:
    old = spec_with({"type": "llama", **TINY_LLAMA})
    (tmp_path / "old.json").write_text(json.dumps(old))
    save_checkpoint(tmp_path / "old", build_model(spec_with({"name": "llama", **TINY_LLAMA})), old)
    for read in (
        lambda: upgrade_spec(old),
        lambda: read_spec(tmp_path / "old.json"),
        lambda: load_checkpoint(tmp_path / "old"),
    ):
        with pytest.warns(LegacySpecWarning) as caught:
            read()
        assert [w.filename for w in caught] == [__file__], [(w.filename, w.lineno) for w in caught]


def test_a_built_in_backbone_spec_takes_the_backbone_options() -> None:
    # what build_backbone accepts for llama, the spec check must accept too (and still refuse typos)
    validate_spec(spec_with({"name": "llama", **TINY_LLAMA, "bf16": True}))
    build_model(spec_with({"name": "llama", **TINY_LLAMA, "bf16": True}))
    with pytest.raises(ConfigError, match="bf16"):
        validate_spec(spec_with({"name": "llama", **TINY_LLAMA, "bf16": "yes"}))
    with pytest.raises(ConfigError, match="bf61"):
        validate_spec(spec_with({"name": "llama", **TINY_LLAMA, "bf61": True}))


def test_vocab_size_comes_from_the_tokenizer_in_the_backbone_builder() -> None:
    assert build_backbone({"name": "llama", **TINY_LLAMA}, vocab_size=70).vocab_size == 70
    assert build_backbone({"name": "llama", **TINY_LLAMA, "vocab_size": 80}, vocab_size=70).vocab_size == 80
    with pytest.raises(ValueError, match="backbone vocab 60 < tokenizer vocab 70"):
        build_backbone({"name": "llama", **TINY_LLAMA, "vocab_size": 60}, vocab_size=70)


def test_typed_curriculum_and_trainer_from_train_config(tmp_path) -> None:
    task = {"name": "kv", "num_pairs": 3}
    cfg = TrainConfig(steps=6, curriculum=[{"num_pairs": 1}, {"num_pairs": 2}, {}], stage_steps=[2, 2])
    assert curriculum(task, cfg) == [
        Stage({"name": "kv", "num_pairs": 1}, 2),
        Stage({"name": "kv", "num_pairs": 2}, 2),
        Stage({"name": "kv", "num_pairs": 3}, None),
    ]
    assert curriculum(task, TrainConfig()) == [Stage(task)]
    spec = {**spec_with({"name": "llama", **TINY_LLAMA}), "task": task}
    trainer = Trainer(build_model(spec), cfg, curriculum(task, cfg), tmp_path, spec)
    assert trainer.task(1).config.num_pairs == 2 and trainer.last_stage_start is None


@pytest.mark.parametrize("options", [{"lora": {"r": 2}}, {"freeze": True, "train_top_layers": 1}])
def test_frozen_backbone_checkpoint_holds_only_trained_tensors(tmp_path, options) -> None:
    pytest.importorskip("peft")
    _save_tiny_folder(tmp_path / "tiny")
    spec = spec_with({"name": "hf", "path": str(tmp_path / "tiny"), **options})
    torch.manual_seed(1)
    model = build_model(spec)
    with torch.no_grad():  # as if trained: every trainable tensor moves
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01)
    frozen = frozen_keys(model)
    save_checkpoint(tmp_path / "ck", model, spec)
    saved = load_file(str(tmp_path / "ck" / "model.safetensors"))
    assert frozen and not set(saved) & set(frozen)
    assert set(saved) == set(model.state_dict()) - set(frozen)
    reference = json.loads((tmp_path / "ck" / BACKBONE_REF).read_text())
    assert reference["backbone"] == {"name": "hf", "path": str(tmp_path / "tiny")}
    assert reference["frozen_tensors"] == len(frozen)
    loaded, _, _ = load_checkpoint(tmp_path / "ck")
    assert_same_weights(model, loaded)

    # a full checkpoint of the same model (as saved before references existed) loads the same
    (tmp_path / "full").mkdir()
    save_model(model, str(tmp_path / "full" / "model.safetensors"))
    (tmp_path / "full" / "spec.json").write_text(json.dumps(spec))
    assert_same_weights(model, load_checkpoint(tmp_path / "full")[0])

    # another backbone in the referenced folder is refused, not silently combined
    weights = load_file(str(tmp_path / "tiny" / "model.safetensors"))
    save_file({k: v + 1 for k, v in weights.items()}, str(tmp_path / "tiny" / "model.safetensors"), {"format": "pt"})
    with pytest.raises(CheckpointError, match="another backbone"):
        load_checkpoint(tmp_path / "ck")


def test_backbone_from_a_config_is_saved_whole(tmp_path) -> None:
    spec = spec_with({"name": "hf", "config": TINY_HF, "freeze": True})
    model = build_model(spec)
    save_checkpoint(tmp_path / "ck", model, spec)
    assert not (tmp_path / "ck" / BACKBONE_REF).exists()  # random weights: nothing could give them back
    torch.manual_seed(123)  # another random init, overwritten by the saved weights
    assert_same_weights(model, load_checkpoint(tmp_path / "ck")[0])
