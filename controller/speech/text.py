"""The one rule for text that becomes speech: invisible characters out, nothing-to-say refused.

A NUL reaches espeak-ng as the end of a C string and silently cuts the announcement there; a text
of nothing but zero-width or ideographic spaces plays a chime and then silence, and villagers hear
an alert with no words. So every text the API turns into speech (a broadcast request, and through
it schedules, templates and approved alerts; the console's speech preview; an edited alert text)
goes through :func:`clean_speech_text`, by way of the :data:`SpeechText` type on the request model:

1. control characters (Unicode Cc) and format characters (Cf: zero-width space and joiners, BOM,
   bidi marks, soft hyphen) are removed; tab, newline and carriage return stay, and the other
   controls that separate words (vertical tab, form feed, NEL, the C0 separators) become a space;
2. what is left must hold something to say — a letter or a digit — or it is refused.

Everything else (letters, digits, punctuation, spaces of any kind) is kept exactly, so cleaning
never cuts speakable text and cleaning twice changes nothing.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated

from pydantic import AfterValidator, Field

MAX_TEXT_CHARS = 2000
"""The longest text a request may carry (``speech.max_chars`` may be lower, never higher)."""
KEPT_CONTROLS = frozenset("\t\n\r")
"""Ordinary whitespace controls, kept as they are."""


def _cleaned_char(char: str) -> str:
    category = unicodedata.category(char)
    if category == "Cc":
        if char in KEPT_CONTROLS:
            return char
        return " " if char.isspace() else ""
    if category == "Cf" or category == "Cs":  # Cs: a lone surrogate cannot even be stored as UTF-8
        return ""
    return char


def speakable(text: str) -> bool:
    """True if ``text`` holds at least one letter or digit (what a voice can say)."""
    return any(unicodedata.category(c)[0] in "LN" for c in text)


def clean_speech_text(text: str) -> str:
    """``text`` without control and format characters; ValueError if nothing speakable is left."""
    cleaned = "".join(_cleaned_char(c) for c in text)
    if not speakable(cleaned):
        raise ValueError("text has nothing to speak (it is empty, or only spaces, punctuation or "
                         "invisible characters)")
    return cleaned


SpeechText = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS), AfterValidator(clean_speech_text)]
"""A request field whose text will be spoken (see the module docstring)."""
