"""The county's own CAP reader (county/cap.py): what it takes from real documents of the three
dialects to pick townships, and what it refuses, naming the element — on the repository's samples
and the public CAP library samples (tests/cap, /work/shared/cap-samples when present)."""

from __future__ import annotations

from pathlib import Path

import pytest

from county.cap import CapError, read_cap

CAP = Path(__file__).parent / "cap"


@pytest.mark.parametrize(("name", "dialect", "codes"), [
    ("cap12_zh_rainstorm.xml", "cap1.2", ["340621105201", "340621105202"]),  # valueName 行政区划代码
    ("cap11_zh_cold_wave.xml", "cap1.1", ["340621000000"]),
    ("cn_rainstorm_red_alert.xml", "cn", ["340621105201", "340621105202", "340621105203"]),  # a bare list
    ("cn_polygon_only.xml", "cn", []),  # the township must then be chosen by hand
])
def test_area_codes_of_each_dialect(name: str, dialect: str, codes: list[str]):
    cap = read_cap((CAP / name).read_text(encoding="utf-8"))
    assert cap.dialect == dialect and list(cap.area_codes) == codes


def test_expiry_and_summary():
    cap = read_cap((CAP / "cap12_zh_rainstorm.xml").read_text(encoding="utf-8"))
    assert cap.expires is not None and cap.expires.isoformat() == "2099-11-28T15:15:00+08:00"
    assert (cap.identifier, cap.severity, cap.msg_type) == ("CN-AH-HB-SX-20261128-0315-RS", "Extreme",
                                                            "Alert")
    assert read_cap((CAP / "cn_rainstorm_red_alert.xml").read_text(encoding="utf-8")).expires is None


def test_a_declared_encoding_is_rewritten_to_what_the_gateways_get():
    """The text travels as UTF-8 inside the JSON command; a GB2312 declaration would mislead the gateway."""
    text = '<?xml version="1.0" encoding="GB2312"?>' + (CAP / "cn_rainstorm_red_alert.xml").read_text(
        encoding="utf-8").split("?>", 1)[1]
    assert read_cap(text).text.startswith('<?xml version="1.0" encoding="UTF-8"?>')


@pytest.mark.parametrize(("text", "element"), [
    ("", "alert"),
    ("<alert", "alert"),
    ('<!DOCTYPE a [<!ENTITY x "y">]><alert>&x;</alert>', "alert"),
    ("<feed/>", "feed"),
    ("<alert><sender>s</sender><sent>2026-11-28 03:15:00+08:00</sent></alert>", "alert/identifier"),
])
def test_refusals_name_the_element(text: str, element: str):
    with pytest.raises(CapError) as caught:
        read_cap(text)
    assert caught.value.element == element and str(caught.value).startswith(f"{element}: ")


def test_refusals_inside_an_info_block():
    good = (CAP / "cn_rainstorm_red_alert.xml").read_text(encoding="utf-8")
    with pytest.raises(CapError, match=r"^alert/info\[0\]/severity: unknown severity 'Purple'"):
        read_cap(good.replace("<severity>Red</severity>", "<severity>Purple</severity>"))
    with pytest.raises(CapError, match=r"^alert/info\[0\]/expires: "):
        read_cap(good.replace("<expires></expires>", "<expires>tomorrow</expires>"))
    with pytest.raises(CapError, match=r"^alert: the document takes \d+ bytes"):
        read_cap(good.replace("<note></note>", f"<note>{'注' * 21000}</note>"))


LIBRARY = Path("/work/shared/cap-samples/google-cap-library")


@pytest.mark.skipif(not LIBRARY.is_dir(), reason="the public CAP library samples are not on this machine")
def test_public_samples_read_or_refused_by_element():
    """Foreign alerts (Canada, Australia, USGS) are read (no Chinese area codes: townships by hand);
    the XXE sample is refused."""
    read = {}
    for path in sorted(LIBRARY.glob("*.cap")):
        try:
            read[path.name] = read_cap(path.read_bytes().decode("utf-8", "replace")).area_codes
        except CapError as exc:
            read[path.name] = exc.element  # type: ignore[assignment]
    assert read["xee.cap"] == "alert"
    assert read["canada.cap"] == () and read["earthquake.cap"] == ()
