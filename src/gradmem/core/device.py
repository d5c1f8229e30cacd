"""Where tensors live: one place that turns a device name into a `torch.device`, reports peak GPU
memory, carries random-number state across devices and turns out-of-memory into a clear error.

Every command takes `--device` (default `auto`: CUDA when torch sees a GPU, else the CPU) and a run
spec may say `train.device`. Models are built on the CPU first, so a seed gives the same initial
weights on any device, then moved.
"""

from __future__ import annotations

import contextlib
import functools
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from gradmem.core.errors import ConfigError, OutOfDeviceMemory

AUTO = "auto"


def resolve_device(name: str | torch.device | None = AUTO) -> torch.device:
    """The torch.device `name` stands for: `auto` (or None) is CUDA when available, else the CPU;
    `cpu`, `cuda`, `cuda:N` as torch spells them. ConfigError for a name torch does not know or a
    GPU this process cannot see (the message says what is visible)."""
    if isinstance(name, torch.device):
        device = name
    else:
        text = AUTO if name is None else str(name).strip().lower()
        if text == AUTO:
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            device = torch.device(text)
        except (RuntimeError, ValueError):
            raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device} is not supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, no GPU visible"
            raise ConfigError(f"device {device}: CUDA is not available (torch {torch.__version__}, {build}); use cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device {device}: this process sees {count} GPU(s) (cuda:0..cuda:{count - 1})")
    return device


def device_option(text: str) -> str:
    """An argparse `type` for `--device`: the resolved name ("cuda", "cpu", "cuda:1"), or a usage
    error saying why (unknown name, no CUDA). argparse also passes a string default through it."""
    import argparse

    try:
        return str(resolve_device(text))
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


_CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # CPU features that make bf16 matmuls faster than fp32


def cpu_bf16_flags() -> list[str]:
    """The bf16 matmul features of this CPU (Linux /proc/cpuinfo; empty elsewhere or without any)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text(errors="replace").split())
    except OSError:
        return []
    return [f for f in _CPU_BF16_FLAGS if f in flags]


def cpu_model_name() -> str:
    """This CPU's model name as `lscpu` prints it (Linux /proc/cpuinfo; else what `platform` knows),
    for timings that must say which CPU they came from."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def fast_bf16(device_type: str) -> bool:
    """Whether bf16 autocast pays on this device kind: a GPU with bf16 support, or a CPU with AMX or
    AVX512-BF16. Without those a CPU emulates bf16 matmuls, measured ~4x slower than fp32 on an
    Ice Lake core (docs/performance.md), so `bf16: "auto"` stays in fp32 there."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device_type == "cpu" and bool(cpu_bf16_flags())


def precision_note(setting: bool | str, device: torch.device) -> str:
    """One line saying what `backbone.bf16 = setting` means on `device` (logged at training start)."""
    if setting != "auto":
        return f"bf16 autocast {'on' if setting else 'off'}"
    if fast_bf16(device.type):
        why = "a GPU with bf16" if device.type == "cuda" else f"this CPU has {', '.join(cpu_bf16_flags())}"
        return f"bf16 autocast on (auto: {why})"
    why = "no bf16 on this GPU" if device.type == "cuda" else "this CPU has no AMX or AVX512-BF16"
    return f"bf16 autocast off (auto: {why})"


def device_name(device: torch.device) -> str:
    """A human-readable name of the hardware behind `device` (the GPU's model on CUDA)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window on a CUDA device (nothing to do on the CPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float | None:
    """Peak GPU memory allocated by tensors since the last reset, in MiB; None on the CPU."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def rng_state() -> dict[str, Any]:
    """The CPU and (when initialised) every CUDA generator's state, for an exact resume."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Any) -> None:
    """Restore what `rng_state` saved; a CUDA state saved on a GPU machine is skipped on a CPU one
    (the data stream is drawn on the CPU, so only dropout-like draws on the GPU would differ)."""
    if isinstance(state, torch.Tensor):  # checkpoints written before CUDA state was kept
        torch.set_rng_state(state.cpu())
        return
    torch.set_rng_state(state["cpu"].cpu())
    saved = state.get("cuda")
    if saved is not None and torch.cuda.is_available() and len(saved) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in saved])


@contextlib.contextmanager
def out_of_memory_as_error(what: str, advice: str) -> Iterator[None]:
    """Turn torch's out-of-memory error inside the block into OutOfDeviceMemory naming `what`
    (e.g. "a training step of batch_size 64") and `advice` (which setting to lower)."""
    try:
        yield
    except torch.OutOfMemoryError as err:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # what the failed step held, so the caller can go on or save
        first = str(err).strip().splitlines()[0] if str(err).strip() else "out of memory"
        raise OutOfDeviceMemory(f"out of device memory in {what}: {advice} ({first})") from err
