"""glibc allocator tuning for CPU training: applied once, and never against the user's own choice."""

from __future__ import annotations

import platform

import pytest
import torch

from retromem import cpu_memory


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(cpu_memory, "_applied", None)
    for name in ("RETROMEM_MALLOC_TUNING", "MALLOC_MMAP_THRESHOLD_", "LD_PRELOAD"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("RETROMEM_MALLOC_TUNING", "0", "RETROMEM_MALLOC_TUNING=0"),
        ("MALLOC_MMAP_THRESHOLD_", "65536", "set by the user"),
        ("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "another allocator"),
    ],
)
def test_the_users_choice_wins(fresh, variable, value, reason):
    fresh.setenv(variable, value)
    assert reason in (cpu_memory._reason_to_skip() or "")
    assert cpu_memory.keep_freed_memory() is False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_applies_once_on_glibc_and_large_tensors_still_work(fresh):
    assert cpu_memory._reason_to_skip() is None
    assert cpu_memory.keep_freed_memory() is True
    assert cpu_memory.keep_freed_memory() is True  # idempotent
    big = torch.ones(64 << 20, dtype=torch.uint8)  # above glibc's default mmap threshold
    assert int(big.sum()) == 64 << 20
