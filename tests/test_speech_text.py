"""The rule for text that becomes speech (controller/speech/text.py), as properties over any text.

A NUL used to cut the spoken text where it stood, and texts of only invisible characters played a
chime and then silence. Whatever a client sends, the rule must keep every character a listener
could hear, refuse what has nothing to say, and give the same answer when applied again.
"""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import ValidationError

from controller.api.routers.alerts import ApproveIn
from controller.api.routers.console import PreviewIn
from controller.broadcast.model import BroadcastRequest
from controller.speech.text import KEPT_CONTROLS, clean_speech_text

INVISIBLE = "\x00\x01\x07\x1b\x7f\x9f\u200b\u200c\u200d\u2060\ufeff\u00ad\u200e\u202e\u2066"
"""Controls and format characters (NUL, BEL, ESC, DEL, C1, zero-width space/joiners, BOM, …)."""
SPACES = " \t\n\r\u3000\u00a0\u2028\x0b\x0c\x85"
"""Whitespace of every kind, ideographic space among it."""
PUNCTUATION = "。，！？、…—.,!?-"

any_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=60)
"""Any text a JSON body can carry (lone surrogates are refused earlier, as invalid UTF-8)."""
speakable_text = st.text(alphabet=st.characters(categories=["Lu", "Ll", "Lo", "Nd"]), min_size=1, max_size=5)
unspeakable_text = st.text(alphabet=st.sampled_from(INVISIBLE + SPACES + PUNCTUATION), max_size=40)


def _heard(text: str) -> list[str]:
    """What a voice can render, in order: every visible character (controls that separate words
    may become a space, so spacing is left out of the comparison)."""
    return [c for c in text if unicodedata.category(c)[0] != "C" and not c.isspace()]


def _try_clean(text: str) -> str | None:
    try:
        return clean_speech_text(text)
    except ValueError:
        return None


@given(any_text)
@example("警报\x00请立即撤离")
@example("\ufeff台风\u200b预警")
def test_cleaning_never_cuts_what_can_be_heard(text: str):
    cleaned = _try_clean(text)
    if cleaned is not None:
        assert _heard(cleaned) == _heard(text)
        assert [c for c in cleaned if c in KEPT_CONTROLS] == [c for c in text if c in KEPT_CONTROLS]


@given(any_text)
def test_what_is_left_has_no_control_or_format_characters(text: str):
    cleaned = _try_clean(text)
    if cleaned is not None:
        assert not [c for c in cleaned if unicodedata.category(c) in ("Cc", "Cf") and c not in KEPT_CONTROLS]


@given(any_text)
def test_accepted_text_always_has_something_to_say(text: str):
    cleaned = _try_clean(text)
    if cleaned is not None:
        assert any(unicodedata.category(c)[0] in "LN" for c in cleaned)


@given(unspeakable_text)
@example("")
@example("\x00")
@example("\u200b\u3000 \u3000")
def test_unspeakable_text_is_always_refused(text: str):
    with pytest.raises(ValueError, match="nothing to speak"):
        clean_speech_text(text)


@given(unspeakable_text, speakable_text, unspeakable_text)
def test_one_word_among_invisible_characters_is_kept(before: str, word: str, after: str):
    assert word in clean_speech_text(before + word + after)


@given(any_text)
def test_cleaning_is_idempotent(text: str):
    cleaned = _try_clean(text)
    if cleaned is not None:
        assert clean_speech_text(cleaned) == cleaned


@pytest.mark.parametrize("build", [
    lambda text: BroadcastRequest.model_validate({"class": "daily", "targets": {"all": True}, "text": text}),
    lambda text: PreviewIn.model_validate({"text": text}),
    lambda text: ApproveIn.model_validate({"text": text}),
], ids=["broadcast", "speech-preview", "alert-approve"])
def test_every_request_that_speaks_uses_the_rule(build):
    assert build("前半句\x00后半句").text == "前半句后半句"
    with pytest.raises(ValidationError) as info:
        build("\x00\u200b\u3000")
    assert info.value.errors()[0]["loc"][0] == "text"
