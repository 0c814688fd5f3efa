"""HTML in CAP text, turned into what a listener should hear.

CAP's headline, description and instruction are plain text by the standard, but warning centres
paste from their web pages: ``<b>``, ``<br>``, ``&nbsp;``, ``&amp;``, numeric entities, now and then
a ``<script>`` or ``<style>`` block. The console shows such text escaped, so it is harmless there;
the loudspeakers must not read tags, entities or script code aloud. :func:`speech_text` is the one
place that strips them; the alert rules call it wherever a CAP field becomes announcement text
(``controller/alerts/rules.py``, ``clean``), and the stored alert keeps the text as written.

The standard library's ``html.parser`` reads the markup (no regular expressions over HTML): it
decodes entities, knows that script and style content is not text, and tolerates the broken
markup real feeds carry. Only HTML element names (and custom or namespaced ones such as Word's
``<o:p>``) count as tags, so plain text like ``能见度<a级 且 b>c`` is kept as written.
"""

from __future__ import annotations

import unicodedata
from enum import IntEnum
from html.parser import HTMLParser

_SILENT = frozenset({"script", "style", "template", "svg", "math"})
"""Elements whose content is code, inert or graphics, never text: dropped with everything inside."""

_PARAGRAPH = frozenset({
    "address", "article", "aside", "blockquote", "body", "caption", "center", "dd", "details", "dialog",
    "dir", "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "frameset", "h1", "h2",
    "h3", "h4", "h5", "h6", "header", "hgroup", "hr", "html", "legend", "li", "listing", "main", "menu",
    "nav", "ol", "p", "plaintext", "pre", "section", "summary", "table", "tbody", "tfoot", "thead",
    "title", "tr", "ul", "xmp",
})
"""Block elements: what they separate are sentences (a full stop's pause)."""

_CLAUSE = frozenset({"br", "td", "th"})
"""A line break or a table cell separates clauses (a comma's pause); two ``<br>`` in a row, a paragraph."""

_INLINE = frozenset({
    "a", "abbr", "acronym", "applet", "area", "audio", "b", "base", "basefont", "bdi", "bdo", "bgsound",
    "big", "blink", "button", "canvas", "cite", "code", "col", "colgroup", "data", "datalist", "del",
    "dfn", "em", "embed", "font", "frame", "head", "i", "iframe", "img", "image", "input", "ins", "kbd",
    "keygen", "label", "link", "map", "mark", "marquee", "meta", "meter", "nobr", "noembed", "noframes",
    "noscript", "object", "optgroup", "option", "output", "param", "picture", "portal", "progress", "q",
    "rb", "rp", "rt", "rtc", "ruby", "s", "samp", "search", "select", "slot", "small", "source", "spacer",
    "span", "strike", "strong", "sub", "sup", "textarea", "time", "track", "tt", "u", "var", "video",
    "wbr",
})
"""Every other HTML element (current and obsolete): its tags vanish, its text stays."""

_KNOWN = _SILENT | _PARAGRAPH | _CLAUSE | _INLINE


def _is_markup(tag: str) -> bool:
    """An HTML element, a custom element (``x-foo``) or a namespaced one (Word's ``o:p``); any other
    ``<word …>`` is text that happens to hold '<' and is kept as written."""
    return tag in _KNOWN or "-" in tag or ":" in tag


_PASSES = 3
"""Markup escaped once or twice more than it should be is still markup; more is not text anyone wrote."""

_PUNCTUATION = "。！？；，、：.!?;,:"
"""Text already ending in one of these needs no added pause."""


class _Break(IntEnum):
    CLAUSE = 1
    SENTENCE = 2


_PAUSES = {**dict.fromkeys(_PARAGRAPH, _Break.SENTENCE), "td": _Break.CLAUSE, "th": _Break.CLAUSE}
"""The pause an element's start or end tag makes (``<br>`` counts its repeats, see ``_Reader``)."""


def speech_text(text: str) -> str:
    """``text`` without markup: tags removed, entities decoded, script/style content dropped,
    ``<br>`` and block elements turned into pauses (，/。 in Chinese, ", "/". " in English).

    Markup escaped twice (``&amp;lt;b&amp;gt;``, a common feed bug) is stripped too: a listener
    never wants a tag or an entity read out. Line breaks in the text itself are kept: they are the
    plain-text layout the caller folds. Invisible characters (zero-width spaces, soft hyphens,
    control codes) are removed.
    """
    for _ in range(_PASSES):
        if "<" not in text and "&" not in text:
            break
        reader = _Reader()
        reader.feed(text)
        reader.close()
        stripped = reader.result()
        if stripped == text:
            break
        text = stripped
    return _visible(text)


def _visible(text: str) -> str:
    """Without format and control characters (except line breaks and tabs) and U+FFFD."""
    return "".join(c for c in text if c in "\n\t" or (unicodedata.category(c) not in ("Cc", "Cf")
                                                      and c != "\ufffd"))


class _Reader(HTMLParser):
    """Collects text and pauses; a parse never fails (html.parser is lenient by design)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._out = ""
        self._pause: _Break | None = None
        self._breaks_in_a_row = 0
        self._silent = 0

    def result(self) -> str:
        return self._out.strip()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._tag(tag, self.get_starttag_text() or f"<{tag}>", opening=True)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._tag(tag, self.get_starttag_text() or f"<{tag}/>", opening=False)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SILENT:
            self._silent = max(0, self._silent - 1)
        elif tag == "br":  # </br> is read as <br> by browsers
            self._tag(tag, "", opening=False)
        elif tag in _PAUSES:
            self._pause_for(_PAUSES[tag])
        elif not _is_markup(tag):
            self.handle_data(f"</{tag}>")

    def handle_data(self, data: str) -> None:
        if self._silent:
            return
        if not data.strip():
            if self._pause is None:
                self._out += data
            return
        if self._pause is not None:
            self._out = _join(self._out, self._pause, data)
        else:
            self._out += data
        self._pause = None
        self._breaks_in_a_row = 0

    def _tag(self, tag: str, written: str, *, opening: bool) -> None:
        if tag in _SILENT:
            self._silent += opening  # <script/> has no content to skip
        elif self._silent:
            return
        elif tag == "br":
            self._breaks_in_a_row += 1
            self._pause_for(_Break.SENTENCE if self._breaks_in_a_row > 1 else _Break.CLAUSE)
        elif tag in _PAUSES:
            self._pause_for(_PAUSES[tag])
        elif not _is_markup(tag):
            self.handle_data(written)  # not HTML: text that happens to hold '<'

    def _pause_for(self, kind: _Break) -> None:
        self._pause = kind if self._pause is None else max(self._pause, kind)


def _join(before: str, pause: _Break, after: str) -> str:
    """``before`` and ``after`` with the pause between them, in the language around it."""
    head, tail = before.rstrip(), after.lstrip()
    if not head:
        return tail
    chinese = _is_chinese(head[-1]) or _is_chinese(tail[0])
    if head[-1] in _PUNCTUATION:
        return head + ("" if chinese else " ") + tail
    if chinese:
        return head + ("。" if pause is _Break.SENTENCE else "，") + tail
    return head + (". " if pause is _Break.SENTENCE else ", ") + tail


def _is_chinese(char: str) -> bool:
    """CJK ideographs and full-width forms: Chinese punctuation and no spaces around them."""
    return "\u2e80" <= char <= "\u9fff" or "\uf900" <= char <= "\ufaff" or "\uff00" <= char <= "\uffef"
