"""Every module of the package imports, offline, without opening a network connection.

The modules are discovered with ``pkgutil.walk_packages``, so a new module is covered without being
listed here; a package that fails to import while they are discovered is tested (and fails) by name.
``__main__`` modules are left out: importing one runs the command.
"""

from __future__ import annotations

import importlib
import pkgutil
import socket

import pytest

import retromem


def pytest_generate_tests(metafunc):
    if "module_name" in metafunc.fixturenames:
        metafunc.parametrize("module_name", _module_names())


def test_module_imports_offline(module_name, monkeypatch):
    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(variable, "1")
    real_connect = socket.socket.connect

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"importing {module_name} opened a network connection to {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    try:
        importlib.import_module(module_name)
    except Exception as err:  # any failure to import is the finding, reported by the module's name
        pytest.fail(f"{module_name} does not import: {type(err).__name__}: {err}", pytrace=False)


def test_the_modules_are_discovered():
    names = _module_names()
    assert {"retromem", "retromem.cli", "retromem.eval", "retromem.eval.stats"} <= set(names)
    assert len(names) > 20 and not any(name.endswith(".__main__") for name in names)


def _module_names() -> list[str]:
    """Every package and module under ``retromem``, sorted; a package that fails to import is kept by name."""
    names = ["retromem"]
    names += [info.name for info in pkgutil.walk_packages(retromem.__path__, prefix="retromem.", onerror=names.append)]
    return sorted({name for name in names if name.rsplit(".", 1)[-1] != "__main__"})
