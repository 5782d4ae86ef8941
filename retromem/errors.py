"""Exceptions that carry enough context (file, line, fix) for a person to act on them."""

from __future__ import annotations

from pathlib import Path


class RetromemError(Exception):
    """Base class of every error retromem raises on purpose; the CLI prints these without a traceback."""


class DataError(RetromemError, ValueError):
    """Bad input data: names the file, the line (when there is one) and what to do about it."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None, fix: str | None = None):
        self.path = Path(path) if path is not None else None
        self.line = line
        self.fix = fix
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        text = where + message
        if fix:
            text += f" ({fix})"
        super().__init__(text)


class MismatchError(RetromemError, ValueError):
    """Two artifacts that must agree (an index and an encoder, embeddings and a corpus) do not."""


class MissingDataError(RetromemError, FileNotFoundError):
    """A data set, split or artifact is not where it was looked for; the message says where to put it."""


class ConfigError(RetromemError, ValueError):
    """An option out of range or of an unknown kind: names the option (and its flag) and the values allowed."""
