"""The passage: the unit that travels from a corpus to an index."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Passage:
    """One retrievable unit: a BEIR document, or a 100-word piece of a KILT page.

    ``page_id`` and ``paragraphs`` (first and last paragraph index) are set for KILT passages only.
    """

    id: str
    text: str
    title: str = ""
    page_id: str | None = None
    paragraphs: tuple[int, int] | None = None

    def full_text(self, sep: str = " ") -> str:
        """Title and text joined as BEIR and MTEB feed them to an encoder."""
        return f"{self.title}{sep}{self.text}".strip() if self.title else self.text.strip()
