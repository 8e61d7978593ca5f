"""Reading a report page back in tests: its sections, images and table rows."""

from __future__ import annotations

import base64
import dataclasses
import io
from html.parser import HTMLParser

from PIL import Image

PNG_PREFIX = "data:image/png;base64,"
_BLOCKS = {"p", "div", "li", "ul", "tr", "td", "th", "dt", "dd", "dl", "h1", "h2", "h3", "figcaption", "figure",
           "header", "section", "table", "title"}


@dataclasses.dataclass
class ReportPage:
    sections: list[str] = dataclasses.field(default_factory=list)
    images: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (src, alt)
    tables: dict[str, list[tuple[str, list[str]]]] = dataclasses.field(default_factory=dict)  # section -> rows
    text: str = ""

    def rows(self, section: str) -> list[tuple[str, list[str]]]:
        """(tr class, cell texts) of the first table in `section`, header row left out."""
        return [row for row in self.tables.get(section, []) if row[1]]

    def decoded_images(self) -> list[Image.Image]:
        """Every image, decoded; fails on anything but a PNG data URI."""
        pictures = []
        for src, alt in self.images:
            assert src.startswith(PNG_PREFIX), f"{alt}: not a PNG data URI: {src[:60]}"
            data = base64.b64decode(src[len(PNG_PREFIX):], validate=True)
            assert data.startswith(b"\x89PNG\r\n\x1a\n"), alt
            picture = Image.open(io.BytesIO(data))
            picture.load()
            pictures.append(picture)
        return pictures


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.page = ReportPage()
        self._section = None
        self._row = None
        self._cell = None
        self._tables_seen: set[str] = set()
        self._in_table = False
        self._text: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in _BLOCKS:
            self._text.append(" ")
        self._in_style = tag == "style"
        if tag in ("section", "header") and attrs.get("id"):
            self._section = attrs["id"]
            self.page.sections.append(self._section)
        elif tag == "img":
            self.page.images.append((attrs.get("src", ""), attrs.get("alt", "")))
        elif tag == "table" and self._section not in self._tables_seen:
            self._tables_seen.add(self._section)
            self._in_table = True
            self.page.tables[self._section] = []
        elif tag == "tr" and self._in_table:
            self._row = (attrs.get("class") or "", [])
        elif tag == "td" and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in _BLOCKS:
            self._text.append(" ")
        self._in_style = False
        if tag == "td" and self._cell is not None:
            self._row[1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.page.tables[self._section].append(self._row)
            self._row = None
        elif tag == "table":
            self._in_table = False

    def handle_data(self, data):
        if not self._in_style:
            self._text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def parse_report(html: str) -> ReportPage:
    parser = _Parser()
    parser.feed(html)
    parser.page.text = " ".join("".join(parser._text).split())
    return parser.page
