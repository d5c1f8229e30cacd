"""Memory files: a written memory saved as safetensors plus a JSON sidecar that says what wrote it.

The sidecar carries the model fingerprint (architecture + weight hash of backbone AND method,
since M0, projection and heads all shape the memory), m, d, dtype and the write settings. Loading
a memory into a model with another fingerprint is refused: its vectors would mean nothing there.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from gradmem.backbones.base import tensor_sha256, weights_hash
from gradmem.memory import Memory
from gradmem.model import MemoryModel

FORMAT_VERSION = 1


def model_fingerprint(model: MemoryModel) -> str:
    """SHA-256 of the backbone description, the method config and all weights."""
    describe = model.backbone.describe()
    describe.pop("attention", None)  # the attention kernel does not change what the model computes
    payload = json.dumps({"backbone": describe, "method": getattr(model.method, "name", "?"),
                          "method_config": model.method.export_config()}, sort_keys=True, default=str)
    return hashlib.sha256((payload + weights_hash(model)).encode()).hexdigest()


def context_hash(ids: list[int]) -> str:
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()


def save_memory(path: str | Path, memory: Memory, model: MemoryModel, context_ids: list[int],
                write_settings: dict[str, Any], fingerprint: str | None = None) -> Path:
    """Save a one-row memory to `path` (.safetensors) and its sidecar (`path` with .json).

    Both files are written under temporary names and renamed, tensor first, sidecar last: a
    sidecar on disk always describes a complete tensor file.
    """
    if len(memory) != 1:
        raise ValueError(f"save one memory at a time; this one has {len(memory)} rows")
    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = memory.prefix.detach().to("cpu").contiguous()  # (1, P, D)
    digest = tensor_sha256(prefix)
    stats = memory.stats
    sidecar = {
        "format_version": FORMAT_VERSION,
        "model_fingerprint": fingerprint or model_fingerprint(model),
        "method": getattr(model.method, "name", "?"),
        "num_vectors": prefix.shape[1],
        "hidden_size": prefix.shape[2],
        "dtype": str(prefix.dtype).replace("torch.", ""),
        "write": write_settings,
        "write_loss": [] if stats is None else stats.losses[:, 0].tolist(),
        "final_write_loss": None if stats is None or stats.final_loss is None else float(stats.final_loss[0]),
        "context_sha256": context_hash(context_ids),
        "context_tokens": len(context_ids),
        "tensor_sha256": digest,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file({"prefix": prefix}, str(tmp))
    os.replace(tmp, path)
    side = path.with_suffix(".json")
    tmp_side = side.with_name(side.name + ".tmp")
    tmp_side.write_text(json.dumps(sidecar, indent=2))
    os.replace(tmp_side, side)
    return path


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """The JSON sidecar of a memory file."""
    side = Path(path).with_suffix(".json")
    if not side.exists():
        raise FileNotFoundError(f"no memory sidecar {side}")
    try:
        return json.loads(side.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"memory sidecar {side} is not valid JSON: {err}") from err


def load_memory(path: str | Path, model: MemoryModel, fingerprint: str | None = None) -> tuple[Memory, dict[str, Any]]:
    """Load a memory for `model`, refusing files written by another model, newer formats,
    or tensors that do not match their sidecar (truncated or tampered)."""
    path = Path(path).with_suffix(".safetensors")
    meta = read_sidecar(path)
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{path}: memory format version {version!r} is newer than this gradmem reads ({FORMAT_VERSION})")
    expected = fingerprint or model_fingerprint(model)
    if meta.get("model_fingerprint") != expected:
        raise ValueError(
            f"{path} was written by a different model (fingerprint {str(meta.get('model_fingerprint'))[:12]}..., "
            f"this model is {expected[:12]}...); a memory is only meaningful to the model that wrote it"
        )
    try:
        prefix = load_file(str(path))["prefix"]
    except Exception as err:  # safetensors raises several types for a damaged file
        raise ValueError(f"{path}: memory tensor file is damaged ({err})") from err
    if tensor_sha256(prefix) != meta.get("tensor_sha256"):
        raise ValueError(f"{path}: memory tensor does not match its sidecar checksum (tampered or truncated)")
    if prefix.shape[2] != model.backbone.hidden_size:
        raise ValueError(f"{path}: memory width {prefix.shape[2]} != model width {model.backbone.hidden_size}")
    device = next(model.parameters()).device
    return Memory(prefix.to(device)), meta
