"""retromem.io: line-numbered JSONL reading and where its errors point."""

from __future__ import annotations

import gzip
import json

import pytest

from retromem.errors import DataError
from retromem.io import iter_jsonl

GOOD = json.dumps({"_id": "0", "text": "fine"})


@pytest.mark.parametrize("ending", ["\n", "\r\n"])
@pytest.mark.parametrize("bad, column, what", [
    ('{"_id": "1", "text": ', 22, "Expecting value"),     # ends after the colon (and a space)
    ('{"_id": "1", "text":', 21, "Expecting value"),
    ('{"_id": "1"', 12, "Expecting ',' delimiter"),
    ('{"_id": "1",', 13, "Expecting property name"),
    ('{', 2, "Expecting property name"),
])
def test_a_line_that_ends_early_is_reported_on_that_line_at_its_end(tmp_path, bad, column, what, ending):
    path = tmp_path / "docs.jsonl"
    path.write_bytes((GOOD + ending + bad + ending + GOOD + ending).encode())
    with pytest.raises(DataError) as err:
        list(iter_jsonl(path))
    assert err.value.path == path and err.value.line == 2
    assert column == len(bad) + 1                             # just after the line's last character
    message = str(err.value)
    assert message.startswith(f"{path}:2: malformed JSON ({what}")
    assert f"column {column} " in message and "end of the line" in message


def test_a_truncated_last_line_without_newline_is_reported_at_its_end(tmp_path):
    path = tmp_path / "docs.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(GOOD + "\n" + GOOD + "\n" + '{"_id": "2", "text": "cut')
    with pytest.raises(DataError) as err:
        list(iter_jsonl(path))
    assert err.value.line == 3 and "Unterminated string" in str(err.value) and "column 22" in str(err.value)


def test_an_error_inside_a_line_keeps_its_column(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(GOOD + "\n" + '{"_id": "1", "text": x}\n', encoding="utf-8")
    with pytest.raises(DataError) as err:
        list(iter_jsonl(path))
    assert err.value.line == 2 and "column 22)" in str(err.value) and "end of the line" not in str(err.value)


def test_good_lines_are_numbered_from_one_and_blank_lines_skipped(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(GOOD + "\n\n  \n" + GOOD + "\r\n", encoding="utf-8")
    assert [lineno for lineno, _ in iter_jsonl(path)] == [1, 4]
