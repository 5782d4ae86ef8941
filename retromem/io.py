"""Small file helpers used everywhere: atomic writes, line-numbered JSONL reading, JSON metadata."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from retromem.errors import ConfigError, DataError, MissingDataError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A crash or an exception leaves the previous file (or nothing) in place, never half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~current_umask())  # mkstemp makes it private (0600): give it a new file's mode
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def current_umask() -> int:
    """The process's file-mode creation mask.

    Read from /proc where there is one; elsewhere by setting it and at once back (which another thread
    creating a file at that instant could notice).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def usual_modes(folder: str | Path) -> None:
    """Give ``folder`` and everything under it the modes that the umask gives new folders and files.

    Staging folders from ``mkdtemp`` are private (0700) and safetensors writes its files 0600: a saved
    model or data set renamed into place from one would be unreadable to the other users of a machine.
    """
    folder = Path(folder)
    umask = current_umask()
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.rglob("*"):
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"invalid JSON: {err.msg}", path, err.lineno, "repair or delete the file") from err


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line; a bad line raises a DataError naming it."""
    path = Path(path)
    with open_text(path) as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            content = line.rstrip("\r\n")  # parsed without its line ending, so no error points past it
            try:
                obj = json.loads(content)
            except json.JSONDecodeError as err:
                raise DataError(
                    f"malformed JSON ({err.msg}, {_json_column(content, err)})", path, lineno,
                    "each line must be one JSON object; fix or remove that line",
                ) from err
            if not isinstance(obj, dict):
                raise DataError(f"expected a JSON object, got {type(obj).__name__}", path, lineno,
                                "each line must be one JSON object")
            yield lineno, obj


def _json_column(content: str, err: json.JSONDecodeError) -> str:
    """Where on its line a JSONL error is: 1-based character column; a line that ends early says so.

    ``content`` is one line without its line ending (a JSONL line holds no other newline), so the
    error's offset is the column on that line; at the very end it is one past the last character.
    """
    column = err.pos + 1
    if err.pos >= len(content.rstrip()):
        return f"column {column} at the end of the line: the object is cut short"
    return f"column {column}"


def open_text(path: str | Path) -> TextLines:
    """Open a UTF-8 text file (``.gz`` decompressed) for reading line by line; see :class:`TextLines`."""
    return TextLines(path)


class TextLines:
    """The lines of a UTF-8 text file, decoded one at a time, as a context manager and an iterator.

    A missing file raises :class:`MissingDataError` and a folder :class:`DataError`, each naming it.
    Bytes that are not UTF-8, or a truncated ``.gz``, raise a :class:`DataError` naming the file and
    the line (a plain ``open`` would raise a ``UnicodeDecodeError`` naming neither). A byte-order mark
    at the start is dropped. Lines keep their line ending as it is in the file (``\\r\\n`` too).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir():
            raise DataError("is a folder, not a file", self.path, fix="give the file inside it")
        if not self.path.exists():
            raise MissingDataError(f"{self.path} does not exist (no such file)")
        if self.path.suffix == ".gz":
            import gzip

            self._handle = gzip.open(self.path, "rb")  # noqa: SIM115 (closed by close()/__exit__)
        else:
            self._handle = open(self.path, "rb")  # noqa: SIM115

    def __enter__(self) -> TextLines:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._handle.close()

    def __iter__(self) -> Iterator[str]:
        lineno = 0
        try:
            for lineno, raw in enumerate(self._handle, start=1):
                try:
                    yield raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError as err:
                    raise DataError(
                        f"not UTF-8 text (byte 0x{raw[err.start]:02x} at byte {err.start + 1} of the line)",
                        self.path, lineno, "convert the file to UTF-8, e.g. iconv -f latin1 -t utf-8 FILE > NEW",
                    ) from None
        except (EOFError, OSError) as err:  # gzip: truncated or not gzip at all
            if isinstance(err, FileNotFoundError):
                raise
            raise DataError(f"cannot read this line: {err}", self.path, lineno + 1,
                            "the compressed file is truncated or damaged: fetch it again") from err


def count_lines(path: str | Path) -> int | None:
    """Lines in a plain file (for progress bars); ``None`` for compressed files, which would need a full read."""
    path = Path(path)
    if path.suffix == ".gz":
        return None
    with open(path, "rb") as handle:
        return sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b""))


def read_ids(path: Path, fix: str) -> list[str]:
    """The ids in an artifact's ``ids.txt``, one a line; a missing file raises :class:`MissingDataError` (``fix``)."""
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as err:
        raise MissingDataError(f"{path} is missing: {fix}") from err
    except (UnicodeDecodeError, IsADirectoryError) as err:
        raise DataError(f"not a text file of ids ({err})", path, fix=fix) from err


def refuse_a_file(folder: Path, option: str, wanted: str) -> None:
    """Refuse an output ``folder`` that is a file (``option`` and ``wanted`` name it in the message)."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{option} {folder} is a file, not a folder: give {wanted}")
