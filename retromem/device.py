"""Which device and precision to run on: one probe for encoding, training and indexing alike.

- :func:`has_accelerator`: CUDA, Apple MPS or Intel XPU;
- :func:`cpu_supports_bf16`: native bf16 kernels on this CPU (AVX512-BF16 / AMX; emulated bf16 is
  slower than fp32);
- :func:`default_device` and :func:`check_device`: the torch device to encode on, and a clear error
  for one this machine lacks;
- :func:`resolve_precision` (training) and :func:`resolve_autocast_dtype` (encoding): what ``auto``
  means here.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from retromem.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def has_accelerator() -> bool:
    """Whether torch sees an accelerator (CUDA, Apple MPS, Intel XPU) rather than only the CPU."""
    if torch.cuda.is_available():
        return True
    backends = getattr(torch, "backends", None)
    if backends is not None and getattr(backends, "mps", None) is not None and backends.mps.is_available():
        return True
    return bool(getattr(torch, "xpu", None) is not None and torch.xpu.is_available())


def cpu_supports_bf16() -> bool:
    """True where oneDNN has native bf16 kernels (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and _cpu_has_bf16_flag()
    except (AttributeError, RuntimeError):
        return False


def default_device() -> str:
    """``cuda`` when there is a GPU (``cuda:<LOCAL_RANK>`` under ``accelerate launch``/``torchrun``, so that
    each process uses its own GPU), else ``cpu``."""
    if not torch.cuda.is_available():
        return "cpu"
    local_rank = os.environ.get("LOCAL_RANK")
    return f"cuda:{int(local_rank) % torch.cuda.device_count()}" if local_rank is not None else "cuda"


def check_device(name: str | None, option: str = "--device") -> torch.device:
    """The torch device ``name`` (None: :func:`default_device`), refusing one that is malformed or absent here."""
    if name is None:
        return torch.device(default_device())
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise ConfigError(f"{option} {name!r} is not a torch device: use cpu, cuda, cuda:1, mps, ...") from err
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"{option} {name}: torch sees no CUDA GPU on this machine (use --device cpu, or leave "
                              "it unset)")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"{option} {name}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    elif device.type == "mps" and not (torch.backends.mps.is_available()):
        raise ConfigError(f"{option} {name}: Apple MPS is not available here (use --device cpu)")
    elif device.type not in ("cpu", "cuda", "mps") and not has_accelerator():
        raise ConfigError(f"{option} {name}: no {device.type} device on this machine (use --device cpu)")
    return device


def resolve_precision(precision: str) -> str:
    """Turn ``auto`` into what this machine trains best in: bf16 (else fp16) on CUDA, bf16 autocast on CPUs
    with native bf16 (AVX512-BF16/AMX), else fp32. fp16 without an accelerator is refused."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    on_cpu = not has_accelerator()
    if precision == "auto":
        if torch.cuda.is_available():
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if on_cpu and cpu_supports_bf16() else "fp32"
    if precision == "fp16" and on_cpu:
        raise ConfigError("fp16 mixed precision needs a GPU: use --precision bf16 (CPUs with AVX512-BF16/AMX) "
                          "or fp32")
    return precision


def resolve_autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for encoding: ``auto`` is bf16 on GPUs that support it (else fp16), bf16 on CPUs
    with native bf16, else None (exact fp32)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return None


def precision_name(dtype: torch.dtype | None) -> str:
    """``fp32``, ``bf16`` or ``fp16`` for an autocast dtype (None: fp32)."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def _cpu_has_bf16_flag() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # not Linux: trust oneDNN's answer
    return "avx512_bf16" in flags or "amx_bf16" in flags
