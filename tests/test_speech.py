"""Speech through the real espeak-ng 1.52 (espeakng-loader) and pyttsx3, in the worker process."""

from __future__ import annotations

import array
import asyncio
import math
import os
import re
import signal
import subprocess
import sys
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controller.speech import tts as tts
from controller.speech.tts import SpeechError, SpeechService, TextTooLong, wav_seconds

ZH = "暴雨红色预警。请各村组立即做好防范准备，人员转移到安全地带。"
EN = "Red rainstorm warning. Move to higher ground now and stay away from rivers and streams."

# Tone contours in espeak's Mandarin phonemes: 55 tone 1, 35 tone 2, 214 tone 3, 51 tone 4.
TONE = {"55": 1, "35": 2, "214": 3, "51": 4}
# What espeak-ng 1.51 (Debian 12) says for 暴雨红色预警: tone numbers spelled in English
# (bao4 → "bay four"), with language switches to English: "(en)b,eI@f'o@(cmn)_| ;'y214_| ...".
ENGLISH_DIGITS = ("f'o@", "t'u:", "Tr'i:", "w'0n", "(en)")


@pytest.fixture
async def speech(tmp_path: Path) -> AsyncIterator[SpeechService]:
    service = SpeechService(tmp_path / "cache")
    await service.start()
    yield service
    await service.stop()


def cjk_chars(text: str) -> int:
    return sum(1 for c in text if "\u4e00" <= c <= "\u9fff")


def wav_info(path: Path) -> tuple[int, int, float]:
    """(rate, channels, RMS dBFS) of a 16-bit WAV."""
    with wave.open(str(path), "rb") as wav:
        samples = array.array("h", wav.readframes(wav.getnframes()))
        rms = math.sqrt(sum(s * s for s in samples) / len(samples))
        return wav.getframerate(), wav.getnchannels(), 20 * math.log10(rms / 32768)


async def test_mandarin_speech_has_a_plausible_length(speech: SpeechService):
    path = await speech.synthesize(ZH, "zh")
    rate, channels, level = wav_info(path)
    assert (rate, channels) == (22050, 1)
    assert level > -35  # speech, not silence
    chars_per_s = cjk_chars(ZH) / wav_seconds(path)
    assert 1.5 < chars_per_s < 7, f"{chars_per_s:.2f} characters per second"


async def test_english_speech_has_a_plausible_length(speech: SpeechService):
    path = await speech.synthesize(EN, "en")
    words_per_min = len(EN.split()) / wav_seconds(path) * 60
    assert 80 < words_per_min < 260, f"{words_per_min:.0f} words per minute"
    assert wav_info(path)[2] > -35


async def test_rate_setting_changes_the_speed(tmp_path: Path, speech: SpeechService):
    fast = SpeechService(tmp_path / "fast", rate_wpm=250)
    try:
        quick = wav_seconds(await fast.synthesize(ZH, "zh"))
    finally:
        await fast.stop()
    slow = wav_seconds(await speech.synthesize(ZH, "zh"))
    assert 1.3 < slow / quick < 2.2


async def test_first_synthesis_of_every_fresh_worker_uses_the_configured_rate(tmp_path: Path):
    """pyttsx3's runAndWait cancels what espeak still has queued: the rate used to be dropped now
    and then (speech at pyttsx3's default 200 wpm). Five fresh workers, five identical lengths."""
    lengths = []
    for i in range(5):
        service = SpeechService(tmp_path / f"c{i}", rate_wpm=250)
        try:
            lengths.append(wav_seconds(await service.synthesize(ZH, "zh")))
        finally:
            await service.stop()
    assert max(lengths) - min(lengths) < 0.05, lengths
    default_rate = SpeechService(tmp_path / "d", rate_wpm=200)
    try:
        assert wav_seconds(await default_rate.synthesize(ZH, "zh")) > lengths[0] * 1.2
    finally:
        await default_rate.stop()


async def test_numbers_are_normalised_before_synthesis(speech: SpeechService):
    assert speech.cache_path("阵风5级", "zh") == speech.cache_path("阵风五级", "zh")
    assert speech.cache_path("阵风5级", "zh") != speech.cache_path("阵风5级", "en")
    # 12119 is read digit by digit, not as 十二千一百十九 as espeak would on its own
    assert wav_seconds(await speech.synthesize("请拨打12119", "zh")) == pytest.approx(
        wav_seconds(await speech.synthesize("请拨打幺二幺幺九", "zh")), abs=0.05)


async def test_cache_hit_returns_the_same_file_without_the_worker(tmp_path: Path, speech: SpeechService):
    first = await speech.synthesize(ZH, "zh")
    stamp = first.stat().st_mtime_ns
    assert await speech.synthesize(ZH, "zh") == first
    assert first.stat().st_mtime_ns == stamp
    # a fresh service on the same cache answers from disk without ever starting a worker
    other = SpeechService(tmp_path / "cache")
    assert await other.synthesize(ZH, "zh") == first
    assert other.worker_pid is None
    await other.stop()


async def test_cache_is_keyed_by_voice_and_rate(tmp_path: Path):
    a = SpeechService(tmp_path / "c", rate_wpm=150)
    b = SpeechService(tmp_path / "c", rate_wpm=180)
    assert a.cache_path(ZH, "zh") != b.cache_path(ZH, "zh")
    assert a.cache_path(ZH, "zh") != a.cache_path(ZH, "en")
    assert a.cache_path(ZH, "zh") == SpeechService(tmp_path / "c").cache_path(ZH, "zh")


async def test_too_long_text_is_refused_clearly(tmp_path: Path):
    service = SpeechService(tmp_path / "c", max_chars=100)
    with pytest.raises(TextTooLong) as caught:
        await service.synthesize("预警" * 60, "zh")
    assert isinstance(caught.value, ValueError)
    assert "120 characters" in str(caught.value) and "at most 100" in str(caught.value)
    assert service.worker_pid is None  # refused before any work


async def test_unknown_language_and_empty_text_are_refused(speech: SpeechService):
    with pytest.raises(ValueError, match="language"):
        await speech.synthesize("hello", "fr")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no text"):
        await speech.synthesize("   ", "zh")


async def test_concurrent_requests_are_served_one_at_a_time(speech: SpeechService):
    texts = [f"第{i}号通知。请注意收听。" for i in range(1, 7)]
    pid = speech.worker_pid
    paths = await asyncio.gather(*(speech.synthesize(t, "zh") for t in texts))
    assert len(set(paths)) == len(texts)
    lengths = [wav_seconds(p) for p in paths]
    assert max(lengths) - min(lengths) < 0.6  # no mixed or truncated audio
    assert speech.worker_pid == pid


async def test_a_worker_killed_while_idle_is_replaced(speech: SpeechService):
    pid = speech.worker_pid
    assert pid is not None
    os.kill(pid, signal.SIGSEGV)
    await asyncio.sleep(0.3)
    path = await speech.synthesize("工作进程重启后继续合成。", "zh")
    assert wav_seconds(path) > 1
    assert speech.worker_pid not in (None, pid)
    assert speech.restarts == 1


async def test_a_worker_crashing_mid_request_is_replaced_and_the_request_retried(speech: SpeechService):
    pid = speech.worker_pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # it will take the request and never answer it
    job = asyncio.create_task(speech.synthesize("合成途中进程崩溃。", "zh"))
    await asyncio.sleep(0.3)
    assert not job.done()
    os.kill(pid, signal.SIGKILL)
    path = await job
    assert wav_seconds(path) > 1
    assert speech.restarts == 1
    assert speech.worker_pid not in (None, pid)


async def test_a_cancelled_request_does_not_answer_the_next_one(speech: SpeechService):
    pid = speech.worker_pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    abandoned = asyncio.create_task(speech.synthesize("这一条被取消了，它很长很长很长很长很长很长。", "zh"))
    await asyncio.sleep(0.2)
    abandoned.cancel()
    with pytest.raises(asyncio.CancelledError):
        await abandoned
    next_one = asyncio.create_task(speech.synthesize("下一条。", "zh"))
    await asyncio.sleep(0.2)
    os.kill(pid, signal.SIGCONT)
    path = await next_one
    assert wav_seconds(path) < 2.5  # its own short text, not the long abandoned one
    assert speech.worker_pid == pid and speech.restarts == 0
    assert not list(path.parent.glob("*.part"))  # the abandoned file was cleaned up


async def test_a_request_failing_twice_gives_a_clear_error(speech: SpeechService,
                                                           monkeypatch: pytest.MonkeyPatch):
    """Every worker hangs (stopped as soon as it is ready): one retry, then SpeechError."""
    monkeypatch.setattr(tts, "BASE_TIMEOUT_S", 0.5)
    monkeypatch.setattr(tts, "TIMEOUT_PER_CHAR_S", 0.0)
    spawn = speech._spawn

    async def spawn_and_freeze() -> None:
        await spawn()
        assert speech.worker_pid is not None
        os.kill(speech.worker_pid, signal.SIGSTOP)

    monkeypatch.setattr(speech, "_spawn", spawn_and_freeze)
    os.kill(speech.worker_pid, signal.SIGSTOP)
    with pytest.raises(SpeechError, match=r"failed twice.*no answer"):
        await speech.synthesize("永远等不到回答。", "zh")
    monkeypatch.undo()
    assert wav_seconds(await speech.synthesize("恢复正常。", "zh")) > 0.5  # and the service lives on


async def test_mandarin_phonemes_carry_tones_not_spoken_digits(speech: SpeechService):
    phonemes = await speech.phonemes("暴雨红色预警", "zh")
    # bào yǔ hóng sè yù jǐng: tones 4 3 2 4 4 3, each syllable one contour, nothing else
    assert [TONE[t] for t in re.findall(r"\d+", phonemes)] == [4, 3, 2, 4, 4, 3], phonemes
    assert not any(word in phonemes for word in ENGLISH_DIGITS), phonemes


async def test_hotline_phonemes_are_digits_with_yao(speech: SpeechService):
    phonemes = await speech.phonemes("请拨打12119", "zh")
    assert phonemes.count("j'Au55") == 3  # 幺 (yāo) for each 1
    # qǐng bō dǎ | yāo èr yāo yāo jiǔ
    assert [TONE[t] for t in re.findall(r"\d+", phonemes)] == [3, 1, 3, 1, 4, 1, 1, 3], phonemes


async def test_english_phonemes(speech: SpeechService):
    assert await speech.phonemes("Heavy rain", "en") == "h'Evi r'eIn"


def test_ebc_say_writes_a_wav(tmp_path: Path):
    out = tmp_path / "say.wav"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    text = "气温-5℃，阵风7级。"
    command = [sys.executable, "-m", "controller.app.cli", "say", text, "--lang", "zh", "-o", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "零下五摄氏度" in done.stdout and "七级" in done.stdout
    assert wav_seconds(out) > 1
    assert list((tmp_path / "xdg" / "ebc" / "speech").glob("zh-*.wav"))


def test_ebc_say_refuses_too_long_text(tmp_path: Path):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    done = subprocess.run([sys.executable, "-m", "controller.app.cli", "say", "长" * 2001, "-o",
                           str(tmp_path / "x.wav")], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 1
    assert "2001 characters" in done.stderr and "2000" in done.stderr
    assert not (tmp_path / "x.wav").exists()
