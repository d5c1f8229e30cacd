"""Memory files: a written memory saved as safetensors plus a JSON sidecar that says what wrote it.

The sidecar records the backbone (architecture, config and a hash of its weights), the method's
structure, a fingerprint over all of these and every weight (M0, projection and heads shape the
memory too), m, d, dtype, the write settings, the per-step reconstruction loss and the context's
hash and length. A memory means something only to the model that wrote it, so loading it into
another model, a damaged or tampered file, or a newer format version is refused with a clear error.

Files are written under unique temporary names, flushed to disk and renamed, tensor first and
sidecar last: a sidecar on disk always describes a complete tensor file. Only prefix memories are
saved: a memory with per-layer state (ARMT) is refused rather than saved without it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save

from gradmem.core.errors import DamagedMemory, InvalidInput
from gradmem.core.files import atomic_write, atomic_write_text
from gradmem.core.hashing import tensor_sha256, weights_hash
from gradmem.core.memory import Memory
from gradmem.core.method import MethodModel

FORMAT_VERSION = 2
DTYPES = ("float32", "float16", "bfloat16", "float64")  # what a memory tensor may be stored as


def backbone_record(model: MethodModel) -> dict[str, Any]:
    """Architecture, config and weight hash of the backbone (the attention kernel is left out:
    it does not change what the model computes)."""
    describe = dict(model.backbone.describe())
    describe.pop("attention", None)
    return {
        "architecture": describe.get("model_type") or describe.get("name"),
        "config": describe,
        "weights_sha256": weights_hash(model.backbone),
    }


def method_record(model: MethodModel) -> dict[str, Any]:
    """Method name and structural config. The write settings (steps, lr) are left out: they change
    how a memory was written, not what a memory vector means to the model."""
    config = dict(model.method.export_config())
    config.pop("write", None)
    return {"name": model.method.name, "config": config}


def model_fingerprint(model: MethodModel) -> str:
    """SHA-256 of the backbone record, the method record and all weights (backbone and method)."""
    payload = json.dumps(
        {"backbone": backbone_record(model), "method": method_record(model)}, sort_keys=True, default=str
    )
    return hashlib.sha256((payload + weights_hash(model)).encode()).hexdigest()


def context_hash(ids: list[int]) -> str:
    """SHA-256 of a token id list."""
    return hashlib.sha256(json.dumps([int(i) for i in ids]).encode()).hexdigest()


def memory_paths(path: str | Path) -> tuple[Path, Path]:
    """(tensor file, sidecar) of a memory path given with or without a suffix."""
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


def save_file(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """Write tensors as safetensors with plain file I/O, so a full or read-only disk raises an
    OSError with its errno (safetensors' own writer hides it inside a SafetensorError)."""
    Path(path).write_bytes(save(tensors))


class SpecialFile(OSError):
    """A path that names a FIFO, a device, a socket or a folder where a regular file belongs."""


def read_bytes(path: str | Path, follow_symlinks: bool = True) -> bytes:
    """The bytes of a regular file; with follow_symlinks=False a symbolic link is refused
    (O_NOFOLLOW), so a link planted in a store cannot make the server read another file. Anything
    but a regular file raises SpecialFile without being opened: opening a FIFO waits for a writer
    forever and a device never ends. The open is non-blocking and the opened file checked again,
    so a file swapped in between the two checks cannot block either."""
    info = os.stat(path, follow_symlinks=follow_symlinks)
    if stat.S_ISLNK(info.st_mode):  # seen only with follow_symlinks=False: the error O_NOFOLLOW gives
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path))
    if not stat.S_ISREG(info.st_mode):
        raise SpecialFile(f"{path} is not a regular file")
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags | (0 if follow_symlinks else getattr(os, "O_NOFOLLOW", 0)))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SpecialFile(f"{path} is not a regular file")
        return f.read()


def _refused(err: OSError, what: str) -> DamagedMemory | None:
    """The DamagedMemory for a file the store must not read (a link or a special file), else None."""
    if isinstance(err, SpecialFile):
        return DamagedMemory(f"{what} is not a regular file (a FIFO, device or folder); refused")
    if err.errno == errno.ELOOP:  # O_NOFOLLOW met a symbolic link
        return DamagedMemory(f"{what} is a symbolic link; refused")
    return None


def build_sidecar(
    memory: Memory,
    model: MethodModel,
    context_ids: list[int],
    write_settings: dict[str, Any],
    fingerprint: str | None = None,
    blocks: int = 1,
) -> dict[str, Any]:
    """The sidecar of a one-row memory (`blocks` chunk memories side by side in its prefix)."""
    if len(memory) != 1:
        raise ValueError(f"save one memory at a time; this one has {len(memory)} rows")
    if memory.layer_states is not None:  # a file holds the prefix only: saving would drop the state
        raise ValueError(
            f"memory files hold prefix memories only; this memory keeps per-layer state "
            f"(method {method_record(model)['name']!r}) and cannot be saved"
        )
    prefix = memory.prefix.detach()
    if prefix.shape[1] % blocks:
        raise ValueError(f"{prefix.shape[1]} memory vectors do not split into {blocks} blocks")
    stats = memory.stats
    losses = [] if stats is None else stats.losses.mean(1).tolist()  # (K,) mean over blocks
    return {
        "format_version": FORMAT_VERSION,
        "model_fingerprint": fingerprint or model_fingerprint(model),
        "backbone": backbone_record(model),
        "method": method_record(model)["name"],
        "method_config": method_record(model)["config"],
        "num_vectors": prefix.shape[1],
        "hidden_size": prefix.shape[2],
        "blocks": blocks,
        "dtype": str(prefix.dtype).replace("torch.", ""),
        "write": write_settings,
        "write_loss": losses,
        "block_write_loss": [] if stats is None else stats.losses.T.tolist(),  # (blocks, K)
        "steps_taken": None if stats is None or stats.steps_taken is None else stats.steps_taken.tolist(),
        "final_write_loss": None if stats is None or stats.final_loss is None else float(stats.final_loss.mean()),
        "context_sha256": context_hash(context_ids),
        "context_tokens": len(context_ids),
        "tensor_sha256": tensor_sha256(prefix),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_memory_files(path: str | Path, prefix: torch.Tensor, sidecar: dict[str, Any]) -> Path:
    """Atomically write a (1, P, D) prefix and its sidecar; returns the tensor file's path."""
    tensor_path, side = memory_paths(path)
    tensor_path.parent.mkdir(parents=True, exist_ok=True)
    prefix = prefix.detach().to("cpu").contiguous()
    atomic_write(tensor_path, lambda tmp: save_file({"prefix": prefix}, tmp))
    atomic_write_text(side, json.dumps(sidecar, indent=2))
    return tensor_path


def save_memory(
    path: str | Path,
    memory: Memory,
    model: MethodModel,
    context_ids: list[int],
    write_settings: dict[str, Any],
    fingerprint: str | None = None,
    blocks: int = 1,
) -> Path:
    """Save a one-row memory to `path`.safetensors and its sidecar `path`.json."""
    sidecar = build_sidecar(memory, model, context_ids, write_settings, fingerprint, blocks)
    return write_memory_files(path, memory.prefix, sidecar)


def read_sidecar(path: str | Path, follow_symlinks: bool = True, label: str | None = None) -> dict[str, Any]:
    """The JSON sidecar of a memory file (`label` names it in errors instead of its path)."""
    side = memory_paths(path)[1]
    where = label or f"memory sidecar {side}"
    try:
        meta = json.loads(read_bytes(side, follow_symlinks))
    except FileNotFoundError:
        raise FileNotFoundError(f"no {where}") from None
    except OSError as err:
        refused = _refused(err, where)
        if refused is not None:
            raise refused from err
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DamagedMemory(f"{where} is not valid JSON: {err}") from err
    if not isinstance(meta, dict):
        raise DamagedMemory(f"{where} is not a JSON object")
    return meta


def check_sidecar(meta: dict[str, Any], where: str) -> None:
    """Raise DamagedMemory unless the fields every reader relies on have usable values."""

    def count(key: str, least: int) -> bool:
        value = meta.get(key)
        return isinstance(value, int) and not isinstance(value, bool) and value >= least

    bad = [
        key
        for key, least in (("num_vectors", 0), ("hidden_size", 1), ("blocks", 1), ("context_tokens", 0))
        if not count(key, least)
    ]
    if meta.get("dtype") not in DTYPES:
        bad.append("dtype")
    if not isinstance(meta.get("write"), dict):
        bad.append("write")
    if not isinstance(meta.get("write_loss"), list):
        bad.append("write_loss")
    if bad:
        raise DamagedMemory(f"{where} has unusable fields: {', '.join(bad)}")


def check_compatible(meta: dict[str, Any], model: MethodModel, fingerprint: str, where: str) -> None:
    """Raise a ValueError saying why a memory with sidecar `meta` cannot be read by `model`."""
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise InvalidInput(
            f"{where}: memory format version {version!r} is newer than this gradmem reads "
            f"({FORMAT_VERSION}); upgrade gradmem"
        )
    if version < FORMAT_VERSION:
        raise InvalidInput(
            f"{where}: memory format version {version} is older than {FORMAT_VERSION}; rewrite the memory"
        )
    if meta.get("model_fingerprint") == fingerprint:
        return
    theirs, ours = meta.get("backbone") or {}, backbone_record(model)
    if theirs.get("config") != ours["config"]:
        why = f"another backbone architecture ({theirs.get('architecture')!r} vs this {ours['architecture']!r}, configs differ)"
    elif theirs.get("weights_sha256") != ours["weights_sha256"]:
        why = "the same backbone architecture with different weights"
    else:
        why = "the same backbone with a different memory method or method weights"
    raise InvalidInput(
        f"{where} was written by a different model, {why} (fingerprint {str(meta.get('model_fingerprint'))[:12]}..., "
        f"this model is {fingerprint[:12]}...); a memory is only meaningful to the model that wrote it"
    )


def load_memory(
    path: str | Path,
    model: MethodModel,
    fingerprint: str | None = None,
    label: str | None = None,
    follow_symlinks: bool = True,
) -> tuple[Memory, dict[str, Any]]:
    """Load a memory for `model`, refusing files written by another model, other format versions,
    or tensors that do not match their sidecar (truncated or tampered). `label` names the memory
    in errors instead of its path (the service shows no file-system paths)."""
    tensor_path, _ = memory_paths(path)
    where = label or str(tensor_path)
    meta = read_sidecar(tensor_path, follow_symlinks, label)
    check_compatible(meta, model, fingerprint or model_fingerprint(model), where)
    check_sidecar(meta, where)
    try:
        data = read_bytes(tensor_path, follow_symlinks)
    except FileNotFoundError:
        raise DamagedMemory(f"{where}: memory tensor file is missing") from None
    except OSError as err:
        refused = _refused(err, f"{where}: the memory tensor file")
        if refused is not None:
            raise refused from err
        raise
    try:
        prefix = load(data)["prefix"]
    except Exception as err:  # safetensors raises several types for a damaged file
        raise DamagedMemory(f"{where}: memory tensor file is damaged ({err})") from err
    if tensor_sha256(prefix) != meta.get("tensor_sha256"):
        raise DamagedMemory(f"{where}: memory tensor does not match its sidecar checksum (tampered or truncated)")
    expected = (1, meta.get("num_vectors"), meta.get("hidden_size"))
    if tuple(prefix.shape) != expected or str(prefix.dtype).replace("torch.", "") != meta.get("dtype"):
        raise DamagedMemory(
            f"{where}: tensor {tuple(prefix.shape)} {prefix.dtype} does not match its sidecar "
            f"{expected} {meta.get('dtype')}"
        )
    if prefix.shape[2] != model.backbone.hidden_size:
        raise InvalidInput(f"{where}: memory width {prefix.shape[2]} != model width {model.backbone.hidden_size}")
    param = next(model.parameters())
    return Memory(prefix.to(device=param.device, dtype=param.dtype)), meta
