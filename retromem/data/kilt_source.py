"""KILT knowledge sources: one Wikipedia page a line, cut into passages of ``words`` words.

A knowledge-source line is ``{"wikipedia_id": ..., "wikipedia_title": ..., "text": [paragraph, ...]}`` with
paragraph 0 the page's title (KILT's layout; the 35 GB KILT Wikipedia and the small sources under
``../shared/data/kilt`` alike). Passages are cut as DPR and KILT cut them: the words of paragraphs 1.. are
counted across paragraph boundaries, every ``stride`` words a passage of ``words`` words begins (``stride``
defaults to ``words``: no overlap), and the last passage of a page may be shorter. The title is not counted
among the words; it is the passage's ``title``, which :meth:`Passage.full_text` prepends. Each passage keeps its
page id and the paragraph range it spans (``paragraphs=(first, last)``, indices into ``text``), so page-level
provenance comes back from passage retrieval. Passage ids are ``<wikipedia_id>#<i>`` (``i`` from 0 within the
page).

The file is streamed: nothing of the whole source is held in memory (in particular no set of the page ids
seen, which for KILT's 5.9 million pages would take gigabytes; an index built from the passages refuses
duplicate passage ids).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from retromem.data.passage import Passage
from retromem.errors import ConfigError, DataError
from retromem.io import iter_jsonl

DEFAULT_PASSAGE_WORDS = 100


def iter_kilt_passages(path: str | Path, words: int = DEFAULT_PASSAGE_WORDS,
                       stride: int | None = None) -> Iterator[Passage]:
    """Stream the passages of a KILT knowledge source (see the module docstring).

    Errors (DataError naming the file and line): malformed JSON, a line without ``wikipedia_id`` (or one with
    whitespace, which run files cannot hold), a line without ``text``, a ``text`` that is not a list of
    strings, a file without pages. A page whose paragraphs 1.. hold no words gives one passage with empty text
    (its title still finds it). ``words`` < 1, or ``stride`` < 1 or above ``words`` (words would be skipped),
    raise a :class:`ConfigError`.
    """
    stride = check_passage_size(words, stride)
    path = Path(path)
    pages = 0
    for lineno, obj in iter_jsonl(path):
        page_id, title, paragraphs = read_page(obj, path, lineno)
        pages += 1
        yield from page_passages(page_id, title, paragraphs, words, stride)
    if not pages:
        raise DataError("the knowledge source has no pages", path, fix="check that the file is the right one")


def check_passage_size(words: int, stride: int | None) -> int:
    """The stride to use (``words`` when ``None``); a size or stride out of range is a :class:`ConfigError`."""
    if not isinstance(words, int) or words < 1:
        raise ConfigError(f"passage_words (--passage-words) must be at least 1, got {words}")
    if stride is None:
        return words
    if not isinstance(stride, int) or not 1 <= stride <= words:
        raise ConfigError(f"passage_stride (--passage-stride) must be between 1 and --passage-words ({words}), "
                          f"got {stride}: a larger stride would skip words")
    return stride


def read_page(obj: dict, path: Path, lineno: int) -> tuple[str, str, list[str]]:
    """``(wikipedia_id, title, paragraphs)`` of one knowledge-source line, validated."""
    page_id = obj.get("wikipedia_id")
    if isinstance(page_id, int) and not isinstance(page_id, bool):
        page_id = str(page_id)
    if not isinstance(page_id, str) or not page_id:
        raise DataError("missing or empty 'wikipedia_id'", path, lineno,
                        'each line needs {"wikipedia_id": ..., "wikipedia_title": ..., "text": [title, ...]}')
    if any(c.isspace() for c in page_id):
        raise DataError(f"'wikipedia_id' {page_id!r} contains whitespace, which run files cannot hold", path, lineno,
                        "replace the whitespace, e.g. with '_'")
    if "text" not in obj:
        raise DataError(f"page {page_id!r} has no 'text' field", path, lineno,
                        "'text' must be the list of the page's paragraphs, paragraph 0 its title")
    paragraphs = obj["text"]
    if not isinstance(paragraphs, list) or not all(isinstance(p, str) for p in paragraphs):
        raise DataError(f"page {page_id!r}: 'text' must be a list of strings (the paragraphs, paragraph 0 the title)",
                        path, lineno)
    title = obj.get("wikipedia_title")
    if title is None:
        title = paragraphs[0] if paragraphs else ""
    if not isinstance(title, str):
        raise DataError(f"page {page_id!r}: 'wikipedia_title' must be a string", path, lineno)
    return page_id, title.strip(), paragraphs


def page_passages(page_id: str, title: str, paragraphs: list[str], words: int, stride: int) -> Iterator[Passage]:
    """The passages of one page (paragraph 0, the title, is not cut: it is every passage's title)."""
    tokens: list[str] = []
    owner: list[int] = []   # the paragraph of each word
    for index in range(1, len(paragraphs)):
        split = paragraphs[index].split()
        tokens.extend(split)
        owner.extend([index] * len(split))
    if not tokens:
        last = max(len(paragraphs) - 1, 0)
        yield Passage(id=f"{page_id}#0", text="", title=title, page_id=page_id, paragraphs=(min(1, last), last))
        return
    start, number = 0, 0
    while True:
        end = min(start + words, len(tokens))
        yield Passage(id=f"{page_id}#{number}", text=" ".join(tokens[start:end]), title=title, page_id=page_id,
                      paragraphs=(owner[start], owner[end - 1]))
        if end == len(tokens):
            return
        start += stride
        number += 1


def passage_page(passage_id: str) -> str:
    """The page id of a passage id ``<wikipedia_id>#<i>`` (for passages known only by id, e.g. from a run file)."""
    page, sep, number = passage_id.rpartition("#")
    return page if sep and number.isdigit() else passage_id
