"""The weights file of a checkpoint: every tensor, or (peft-style) only the trained ones plus a
reference to the backbone they were trained on.

A model whose backbone is frozen or LoRA-adapted trains a few megabytes (M0, projection, WRITE
head, adapters, top layers) on top of a backbone of hundreds of megabytes that it never changes.
When that backbone is loaded from a folder (`"path"` or `"pretrained"` in its spec), a checkpoint
saves the trained tensors in `model.safetensors` and writes `backbone.json`: where the backbone
comes from and the SHA-256 of its frozen tensors. Loading rebuilds the model from the spec (which
loads the backbone from that folder), refuses it if the frozen tensors' SHA-256 differs (another
or changed model), and loads the trained tensors over it: the same model as a full checkpoint.
A backbone built from a config (random weights) or trained in full is saved whole, as before, and
a checkpoint without `backbone.json` is loaded whole, so older checkpoints load unchanged.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from gradmem.core.bounded_io import SMALL_LIMIT, read_limited_text
from gradmem.core.errors import CheckpointError
from gradmem.core.hashing import tensors_sha256

BACKBONE_REF = "backbone.json"
EXTRA_STATE_FLOOR = 256 << 20  # bytes of non-weight state (rotary tables, masks) any spec may ask for
_ITEM_BYTES = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2, "U8": 1, "I8": 1, "BOOL": 1}
SOURCE_KEYS = ("name", "path", "pretrained", "cache_dir")  # where a backbone's weights come from


def frozen_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the backbone's frozen parameters (tied aliases included), sorted."""
    state = model.state_dict(keep_vars=True)
    return sorted(
        k for k, t in state.items() if k.startswith("backbone.") and isinstance(t, nn.Parameter) and not t.requires_grad
    )


def _frozen_sha256(model: nn.Module, keys: list[str]) -> str:
    state = model.state_dict()
    return tensors_sha256({k: state[k] for k in keys})


def backbone_reference(model: nn.Module, backbone_spec: dict[str, Any]) -> dict[str, Any] | None:
    """What `backbone.json` records for this model, or None when the checkpoint must hold every
    tensor (nothing frozen, or a backbone that no folder can give back)."""
    keys = frozen_keys(model)
    if not keys or not ("path" in backbone_spec or "pretrained" in backbone_spec):
        return None
    return {
        "format": 1,
        "backbone": {k: backbone_spec[k] for k in SOURCE_KEYS if k in backbone_spec},
        "frozen_tensors": len(keys),
        "weights_sha256": _frozen_sha256(model, keys),
    }


def save_weights(model: nn.Module, folder: Path, backbone_spec: dict[str, Any]) -> None:
    """Write `model.safetensors` (and `backbone.json` for a frozen backbone loaded from a folder)."""
    reference = backbone_reference(model, backbone_spec)
    if reference is None:
        save_model(model, str(folder / "model.safetensors"))
        return
    frozen = set(frozen_keys(model))
    # clone: a trained tensor tied to another would make safetensors refuse the shared storage
    trained = {k: t.detach().clone().contiguous() for k, t in model.state_dict().items() if k not in frozen}
    save_file(trained, str(folder / "model.safetensors"))
    (folder / BACKBONE_REF).write_text(json.dumps(reference, indent=2))


def load_weights(model: nn.Module, directory: str | Path, device: str | torch.device = "cpu") -> None:
    """Load `directory`/model.safetensors into `model`, refusing a damaged file, one that does not
    match the model, or (with `backbone.json`) a backbone whose frozen tensors are not the ones the
    checkpoint was trained on. The files' checksums are checked by `verify` before this."""
    directory = Path(directory)
    path = directory / "model.safetensors"
    ref_path = directory / BACKBONE_REF
    try:
        if not ref_path.exists():
            missing, unexpected = load_model(model, str(path), strict=False, device=str(device))
        else:
            missing, unexpected = model.load_state_dict(load_file(str(path), device=str(device)), strict=False)
    except (SafetensorError, OSError, RuntimeError) as err:
        raise CheckpointError(
            f"checkpoint {directory}: model.safetensors is damaged or does not fit the spec ({err})"
        ) from err
    if ref_path.exists():
        missing = _check_reference(model, directory, _read_reference(directory), missing)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {directory} does not match its spec: missing {missing}, unexpected {unexpected}"
        )


def check_sizes(shadow: nn.Module, directory: str | Path) -> None:
    """CheckpointError unless the model a spec describes has the weights' shapes. `shadow` is that
    model built on the meta device (no memory behind it), so a spec whose sizes were changed
    (width, layers, vocabulary, window) is refused before the real model allocates anything: every
    parameter must have its shape in the file's header, and the state kept beside the weights (the
    rotary tables a window of 10^9 positions would fill) may not outgrow the weights themselves."""
    from safetensors import safe_open

    path = Path(directory) / "model.safetensors"
    try:
        with safe_open(str(path), framework="pt") as f:  # reads the header only
            stored = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
            dtypes = {key: f.get_slice(key).get_dtype() for key in f.keys()}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"checkpoint {directory}: model.safetensors is damaged ({err})") from err
    state = shadow.state_dict(keep_vars=True)
    groups: dict[int, list[str]] = {}  # tied weights are one tensor under several names; a file keeps one
    for key, tensor in state.items():
        groups.setdefault(id(tensor), []).append(key)
    wrong = [
        f"{k} is {stored[k]} in the weights, {tuple(t.shape)} by the spec"
        for k, t in state.items()
        if k in stored and stored[k] != tuple(t.shape)
    ]
    missing = [names[0] for names in groups.values() if not any(n in stored for n in names)]
    unexpected = sorted(set(stored) - set(state))
    if wrong or missing or unexpected:
        raise CheckpointError(
            f"checkpoint {directory}: spec.json does not describe its weights (changed sizes?): "
            + "; ".join(
                filter(
                    None,
                    [
                        ", ".join(wrong[:5]),
                        f"missing {missing[:5]}" if missing else "",
                        f"unexpected {unexpected[:5]}" if unexpected else "",
                    ],
                )
            )
        )
    weight_bytes = sum(math.prod(shape) * _ITEM_BYTES.get(dtypes[k], 4) for k, shape in stored.items())
    extra = sum(b.numel() * b.element_size() for name, b in shadow.named_buffers() if name not in state)
    if extra > max(weight_bytes, EXTRA_STATE_FLOOR):
        raise CheckpointError(
            f"checkpoint {directory}: spec.json asks for {extra >> 20} MiB of state beside "
            f"{weight_bytes >> 20} MiB of weights (a window or table size changed?); refused before allocating it"
        )


def _read_reference(directory: Path) -> dict[str, Any]:
    """The checkpoint's `backbone.json`; CheckpointError if it is unreadable or not an object."""
    try:
        reference = json.loads(read_limited_text(directory / BACKBONE_REF, SMALL_LIMIT, BACKBONE_REF))
    except (ValueError, OSError) as err:
        raise CheckpointError(f"checkpoint {directory}: {BACKBONE_REF} is unreadable ({err})") from err
    if not isinstance(reference, dict):
        raise CheckpointError(f"checkpoint {directory}: {BACKBONE_REF} is not a JSON object")
    return reference


def _check_reference(model: nn.Module, directory: Path, reference: dict[str, Any], missing: list[str]) -> list[str]:
    """The keys still missing once the frozen ones are accounted for; CheckpointError if the frozen
    tensors the spec's backbone gave are not those the checkpoint was trained on."""
    keys = frozen_keys(model)
    if len(keys) != reference.get("frozen_tensors") or _frozen_sha256(model, keys) != reference.get("weights_sha256"):
        raise CheckpointError(
            f"checkpoint {directory} was trained on another backbone than {reference.get('backbone')} "
            f"gives now (the SHA-256 of its {len(keys)} frozen tensors differs from {BACKBONE_REF})"
        )
    return sorted(set(missing) - set(keys))
