"""Chinese alert text rewritten so espeak-ng says what a listener expects.

espeak-ng's ``cmn`` voice reads Arabic digits poorly (12119 comes out as 十二千一百十九) and knows
nothing of units, clock times, dates or hotlines. A warning is only useful if 5级, 50毫米, 03:15 and
12119 are heard as 五级, 五十毫米, 三点十五分 and 幺二幺幺九, so every digit in Chinese text is
turned into Chinese words here, before synthesis. The rules are a table applied in order: the
most specific patterns (dates, phone numbers, clock times, temperatures) first, plain numbers last,
so a later rule never sees digits an earlier one has already read. English text is left alone:
espeak's English voices read numbers and units well by themselves.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal

DIGITS = "零一二三四五六七八九"
SMALL_UNITS = ("", "十", "百", "千")
BIG_UNITS = ("", "万", "亿", "万亿")
MAX_NUMERAL_DIGITS = 8
"""Integers longer than this (ids, area codes, account numbers) are read digit by digit."""

NUM = r"\d+(?:\.\d+)?"
SIGN = r"(?:-|零下|负)"

# Measure words after which 2 is read 两 (两个人, 两小时, 两万), not 二 (二级, 二月, 二日).
LIANG_BEFORE = ("个", "人", "户", "名", "位", "天", "小时", "次", "辆", "条", "座", "处", "间", "只", "头",
                "台", "艘", "倍", "种", "周", "年", "批", "支", "架", "千", "万", "亿")

# Units written in Latin letters or symbols, as heard after a number (longest first).
UNIT_WORDS: tuple[tuple[str, str], ...] = (
    ("m³/s", "立方米每秒"), ("m3/s", "立方米每秒"), ("km/h", "公里每小时"), ("m/s", "米每秒"),
    ("hPa", "百帕"), ("kPa", "千帕"), ("mm", "毫米"), ("cm", "厘米"), ("km", "公里"), ("kg", "千克"),
    ("μg/m³", "微克每立方米"), ("mg", "毫克"), ("m²", "平方米"), ("m³", "立方米"), ("m", "米"),
    ("h", "小时"), ("t", "吨"),
)

# Words that announce a number to be dialled.
PHONE_CUES = ("电话", "热线", "拨打", "致电", "联系", "手机", "号码", "呼叫", "报警", "求助", "咨询", "举报")

# Service numbers read digit by digit even without a cue (unless a unit follows: 110人 is a count).
HOTLINES = ("110", "119", "120", "122", "12110", "12119", "12121", "12315", "12320", "12345", "12350",
            "12369", "12379", "12395", "95119")

# Characters that make the number before them a quantity, not a hotline.
QUANTITY_AFTER = "人户个名位座间辆条处次级年月日时点分秒天元吨亩万亿千百倍岁号米度"

# Full-width and typographic forms folded to ASCII before the rules run.
_FOLD = str.maketrans({**{chr(0xFF10 + i): str(i) for i in range(10)},
                       "％": "%", "－": "-", "−": "-", "–": "-", "—": "-", "～": "~",
                       "／": "/", "．": "."})


def read_digits(digits: str, *, yao: bool = False) -> str:
    """Digit by digit (二零二六); ``yao`` reads 1 as 幺, as Chinese does for phone numbers."""
    table = DIGITS.replace("一", "幺") if yao else DIGITS
    return "".join(table[int(d)] if d.isdigit() else d for d in digits)


def _read_group(group: int, *, leading: bool) -> str:
    """0..9999 as Chinese; ``leading`` is False when a higher group precedes (zeros then count)."""
    out = ""
    zero = False
    for place in (3, 2, 1, 0):
        d = group // 10**place % 10
        if d == 0:
            zero = bool(out) or not leading
            continue
        if zero and (out or not leading):
            out += "零"
        zero = False
        word = "两" if d == 2 and place == 3 else DIGITS[d]
        if d == 1 and place == 1 and not out and leading:
            word = ""  # 十五, not 一十五, at the very start
        out += word + SMALL_UNITS[place]
    return out


def read_integer(n: int) -> str:
    """An integer as a Chinese numeral: 105 → 一百零五, 12000 → 一万两千, -5 → 负五."""
    if n < 0:
        return "负" + read_integer(-n)
    if n == 0:
        return "零"
    groups: list[int] = []
    while n:
        groups.append(n % 10000)
        n //= 10000
    if len(groups) > len(BIG_UNITS):
        raise ValueError("number too large to read as a numeral")
    out = ""
    pending_zero = False
    for index in range(len(groups) - 1, -1, -1):
        group = groups[index]
        if group == 0:
            pending_zero = bool(out)
            continue
        leading = not out
        if out and (pending_zero or group < 1000):
            out += "零"
        words = "两" if group == 2 and index > 0 else _read_group(group, leading=leading)
        out += words.removeprefix("零") + BIG_UNITS[index]
        pending_zero = False
    return out


def read_number(text: str) -> str:
    """A decimal written in digits: 12.5 → 十二点五, 0.05 → 零点零五, 08 → 八."""
    whole, _, fraction = text.partition(".")
    words = read_integer(int(whole)) if len(whole) <= MAX_NUMERAL_DIGITS else read_digits(whole)
    return words + ("点" + read_digits(fraction) if fraction else "")


def _signed(sign: str | None, number: str, negative: str) -> str:
    return (negative if sign else "") + read_number(number)


def _count(number: str, after: str) -> str:
    """A quantity; 2 becomes 两 before measure words that want it."""
    if number == "2" and after.startswith(LIANG_BEFORE):
        return "两"
    return read_number(number)


# --- the rules ------------------------------------------------------------------------------------

Rule = tuple[re.Pattern[str], Callable[[re.Match[str]], str]]


def _date(m: re.Match[str]) -> str:
    year, month, day = m.group(1), int(m.group(2)), int(m.group(3))
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return m.group(0)
    return f"{read_digits(year)}年{read_integer(month)}月{read_integer(day)}日"


def _minute(minute: str) -> str:
    value = int(minute)
    return ("零" if len(minute) == 2 and value < 10 and value else "") + read_integer(value)


def _clock(m: re.Match[str]) -> str:
    hour, minute = int(m.group(1)), m.group(2)
    if hour > 24 or int(minute) > 59:
        return m.group(0)
    spoken_hour = "两" if hour == 2 else read_integer(hour)
    return f"{spoken_hour}点" + (f"{_minute(minute)}分" if int(minute) else "")


def _hour_minute(m: re.Match[str]) -> str:
    return f"{read_integer(int(m.group(1)))}{m.group(2)}{_minute(m.group(3))}分"


def _phone_text(number: str) -> str:
    """A dialled number: every digit, 1 as 幺, the groups of a dashed number kept apart."""
    return read_digits(re.sub(r"[\s-]+", " ", number).strip(), yao=True)


def _phone(m: re.Match[str]) -> str:
    return _phone_text(m.group(0))


def _cued_phone(m: re.Match[str]) -> str:
    return m.group(1) + _phone_text(m.group(2))


def _dashed(m: re.Match[str]) -> str:
    number = m.group(0)
    digits = number.replace("-", "")
    if number.startswith("0") or len(digits) >= 7:
        return _phone_text(number)
    return m.group(0)  # a range such as 3-5, read by the range rule


def _temperature(m: re.Match[str]) -> str:
    low = m.group(1) is not None and m.group(2) is not None
    if low:
        first = _signed(m.group(1).strip() or None, m.group(2), "零下")
        return f"{first}到{_signed(m.group(3), m.group(4), '零下')}摄氏度"
    return f"{_signed(m.group(3), m.group(4), '零下')}摄氏度"


def _percent(m: re.Match[str]) -> str:
    if m.group(2) is not None:
        return f"百分之{_signed(m.group(1), m.group(2), '负')}到百分之{_signed(m.group(3), m.group(4), '负')}"
    return f"百分之{_signed(m.group(3), m.group(4), '负')}"


def _unit(m: re.Match[str]) -> str:
    return m.group(1) + dict(UNIT_WORDS)[m.group(2)]


def _fraction(m: re.Match[str]) -> str:
    return f"{read_number(m.group(2))}分之{read_number(m.group(1))}"


def _range(m: re.Match[str]) -> str:
    return f"{read_number(m.group(1))}到{_count(m.group(2), m.group(3))}"


def _negative(m: re.Match[str]) -> str:
    return "负" + read_number(m.group(1))


def _long_digits(m: re.Match[str]) -> str:
    number = m.group(0)
    if number.startswith("0") and "." not in number:
        return _phone_text(number)  # a landline or area code: dialled, not counted
    return read_digits(number).replace(".", "点")


def _plain(m: re.Match[str]) -> str:
    return _count(m.group(1), m.group(2))


_UNIT_ALT = "|".join(re.escape(unit) for unit, _ in UNIT_WORDS)
_CUES = "|".join(PHONE_CUES)
_TEMP_UNIT = r"(?:℃|°C|摄氏度)"
_RANGE_SEP = r"\s*(?:~|-|至|到)\s*"

RULES: tuple[Rule, ...] = (
    # 2026-11-28, 2026/11/28, 2026.11.28 → 二零二六年十一月二十八日
    (re.compile(r"(?<![\d.])(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?![\d.])"), _date),
    # 2026年 → 二零二六年 (years are read digit by digit)
    (re.compile(r"(?<![\d.])(\d{4})(?=\s*年)"), lambda m: read_digits(m.group(1))),
    # 电话：0561-1234567, 拨打12119, 联系13912345678
    (re.compile(rf"((?:{_CUES})[^\d\n。！？；]{{0,6}}?)(\d(?:[ -]?\d){{2,}})(?![\d.%])"
                rf"(?!\s*[{QUANTITY_AFTER}])"), _cued_phone),
    # 11-digit mobile numbers
    (re.compile(r"(?<![\d.])1[3-9]\d{9}(?![\d.])"), _phone),
    # dashed numbers: 0561-3021234, 400-810-8888 (short ones like 3-5 are ranges)
    (re.compile(r"(?<![\d.-])\d{2,}(?:-\d{2,}){1,3}(?![\d.])"), _dashed),
    # well-known service numbers, when not a count (119人)
    (re.compile(rf"(?<![\d.])(?:{'|'.join(HOTLINES)})(?![\d.%])(?!\s*[{QUANTITY_AFTER}])"), _phone),
    # 03:15 → 三点十五分
    (re.compile(r"(?<![\d:：])(\d{1,2})[:：](\d{2})(?![\d:：])"), _clock),
    # 3时15分, 3点05分 → 三时十五分, 三点零五分
    (re.compile(r"(?<![\d.])(\d{1,2})(时|点)(\d{1,2})分"), _hour_minute),
    # -5~3℃, -5℃ → 零下五到三摄氏度, 零下五摄氏度
    (re.compile(rf"(?:({SIGN}?\s*)(?<![\d.])({NUM})\s*{_TEMP_UNIT}?{_RANGE_SEP})?"
                rf"({SIGN})?(?<![\d.])({NUM})\s*{_TEMP_UNIT}"), _temperature),
    # 30%, 30%-50%, 30~50% → 百分之三十, 百分之三十到百分之五十
    (re.compile(rf"(?:(-)?(?<![\d.])({NUM})%?{_RANGE_SEP})?(-)?(?<![\d.])({NUM})\s*%"), _percent),
    # 30°, 5度 handled as plain numbers; Latin units: 50mm → 50毫米
    (re.compile(rf"({NUM})\s*({_UNIT_ALT})(?![A-Za-z])"), _unit),
    (re.compile(rf"(?<![\d.])({NUM})\s*°(?![CF])"), lambda m: read_number(m.group(1)) + "度"),
    # 1/3 → 三分之一
    (re.compile(r"(?<![\d/.])(\d+)/(\d+)(?![\d/.])"), _fraction),
    # 3-5级, 6~7级 → 三到五级
    (re.compile(rf"(?<![\d.])({NUM}){_RANGE_SEP}({NUM})(?=(\D{{0,2}}))"), _range),
    # -5 → 负五 (a minus sign not between two numbers)
    (re.compile(rf"(?<![\dA-Za-z.])-({NUM})"), _negative),
    # ids, area codes, landlines: more than MAX_NUMERAL_DIGITS digits or a leading zero
    (re.compile(rf"(?<![\d.])(?:0\d{{2,}}|\d{{{MAX_NUMERAL_DIGITS + 1},}})(?:\.\d+)?(?![\d.])"),
     _long_digits),
    # ordinals: 第2次 → 第二次 (never 两)
    (re.compile(rf"第({NUM})"), lambda m: "第" + read_number(m.group(1))),
    # everything else: 50 → 五十, 12.5 → 十二点五, 2个 → 两个
    (re.compile(rf"({NUM})(?=(\D{{0,2}}))"), _plain),
)


def _fold(text: str) -> str:
    """Full-width forms to ASCII, thousands separators dropped (12,000 → 12000)."""
    text = text.translate(_FOLD)
    return re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)


def normalize(text: str, language: Literal["zh", "en"] = "zh") -> str:
    """Text as it should be spoken: for ``zh`` every number in words, for ``en`` unchanged."""
    if language == "en":
        return text
    text = _fold(text)
    for pattern, spoken in RULES:
        text = pattern.sub(spoken, text)
    return text
