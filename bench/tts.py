"""Speech: real-time factor of synthesis (cold, warm, cached) and time to first sound of a program.

Real-time factor (RTF) = time the caller waits for the WAV / seconds of audio in it. Measured
through controller.speech.tts.SpeechService exactly as the daemon uses it (pyttsx3 over espeak-ng 1.52
in one worker process, JSON over pipes, files renamed into the cache):
  - cold:   a service that was never started, cache empty: worker start + warm-up + synthesis;
  - warm:   worker already running and warmed up, cache empty;
  - cached: the same text again (a file lookup).
For warm syntheses it also splits the time: espeak's own synthesis (pyttsx3's started → finished
utterance), the rest of the request in the worker (pyttsx3's loop, WAV write), and the pipe/JSON
round trip and rename in the caller.

Time to first sound: from starting to iterate a Program (controller.broadcast.program) to its first chunk
with sound, with the speech NOT cached — the chime starts at once while speech is synthesised —
and, for comparison, a program without a tone, whose first sound is the speech itself.

Run: .venv/bin/python bench/tts.py [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from controller.broadcast.model import Tone  # noqa: E402
from controller.broadcast.program import Program  # noqa: E402
from controller.speech.tts import SpeechService, wav_seconds  # noqa: E402
from drivers.audio_output import has_sound  # noqa: E402

TEXTS = {
    "zh": ["濉溪县气象台2026年11月28日03时15分发布暴雨红色预警信号：预计未来3小时内降雨量将达100毫米以上，"
           "请各村组立即做好防范准备，低洼地带人员及时转移。咨询电话：0561-6012345。",
           "淮北市气象台发布寒潮蓝色预警：未来48小时气温将下降8到10摄氏度，最低气温零下5摄氏度，"
           "阵风6到7级，请注意防寒保暖。",
           "森林火险等级5级，请勿野外用火，发现火情请立即拨打12119或119。"],
    "en": ["Red rainstorm warning issued at 3:15 a.m. More than 100 millimetres of rain are expected in the "
           "next three hours. Move away from rivers and low ground now. For help call 12119.",
           "Cold wave warning: temperatures will fall by eight to ten degrees over the next 48 hours, "
           "with gusts of force six to seven. Keep warm and check on elderly neighbours.",
           "Forest fire danger is at level five. Do not light fires outdoors."],
}


def fmt(values: list[float]) -> str:
    return f"{statistics.median(values):.4f}" + (f" (min {min(values):.4f}, max {max(values):.4f})"
                                                 if len(values) > 1 else "")


async def cold(language: str, text: str, runs: int) -> tuple[list[float], list[float]]:
    """Fresh service, fresh worker, empty cache: the first synthesis pays for start and warm-up."""
    rtf, start = [], []
    for i in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            service = SpeechService(Path(tmp))
            t = time.perf_counter()
            await service.start()  # what the first synthesize() of a fresh service would do itself
            started = time.perf_counter()
            path = await service.synthesize(f"{text}{i}", language)  # type: ignore[arg-type]
            rtf.append((time.perf_counter() - t) / wav_seconds(path))
            start.append(started - t)
            await service.stop()
    return rtf, start


async def warm_and_cached(language: str, runs: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in ("rtf", "cached_rtf", "espeak", "worker", "ipc", "audio")}
    with tempfile.TemporaryDirectory() as tmp:
        service = SpeechService(Path(tmp))
        await service.start()
        for i in range(runs):
            for text in TEXTS[language]:
                text = f"{text}{i}"
                path = await service.synthesize(text, language)  # type: ignore[arg-type]
                s = service.last_synthesis
                out["rtf"].append(s["total_s"] / s["seconds"])
                out["espeak"].append(s["espeak_s"] / s["seconds"])
                out["worker"].append((s["worker_s"] - s["espeak_s"]) / s["seconds"])
                out["ipc"].append((s["total_s"] - s["worker_s"]) / s["seconds"])
                out["audio"].append(s["seconds"])
                t = time.perf_counter()
                assert await service.synthesize(text, language) == path  # type: ignore[arg-type]
                out["cached_rtf"].append((time.perf_counter() - t) / s["seconds"])
        await service.stop()
    return out


async def first_sound(tone: Tone, started_worker: bool, runs: int) -> tuple[list[float], list[float]]:
    """Seconds from starting a program to its first chunk with sound, and to its first speech chunk."""
    firsts, speech_ready = [], []
    for i in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            service = SpeechService(Path(tmp))
            if started_worker:
                await service.start()
            text = f"{TEXTS['zh'][0]}{i}"
            program = Program(16000, tone=tone, voice=functools.partial(service.synthesize, text, "zh"))
            t = time.perf_counter()
            first = None
            async for chunk in program.chunks():
                if first is None and has_sound(chunk):
                    first = time.perf_counter() - t
                    break
            firsts.append(first or float("nan"))
            t = time.perf_counter()
            path = await service.synthesize(text, "zh")  # what the program is waiting for
            speech_ready.append(service.last_synthesis.get("total_s", time.perf_counter() - t))
            assert path.exists()
            await service.close()
    return firsts, speech_ready


async def main(runs: int) -> None:
    print(f"speech real-time factor (synthesis wait / audio seconds), median of {runs} run(s) per text")
    print("espeak-ng 1.52 via espeakng-loader, pyttsx3, one worker process, rate 150 wpm\n")
    for language in ("zh", "en"):
        rtf, start = await cold(language, TEXTS[language][0], runs)
        stats = await warm_and_cached(language, runs)
        audio = statistics.median(stats["audio"])
        print(f"[{language}] typical alert: {audio:.1f} s of audio")
        print(f"  cold   RTF {fmt(rtf)}   (worker start + warm-up {fmt(start)} s)")
        print(f"  warm   RTF {fmt(stats['rtf'])}")
        print(f"         of which espeak {fmt(stats['espeak'])}, "
              f"pyttsx3 loop + WAV write {fmt(stats['worker'])}, pipes/JSON/rename {fmt(stats['ipc'])}")
        print(f"  cached RTF {fmt(stats['cached_rtf'])}\n")
    print("time to first sound of a Program (speech not cached), seconds")
    for tone, started in ((Tone.CHIME, True), (Tone.CHIME, False), (Tone.NONE, True), (Tone.NONE, False)):
        firsts, ready = await first_sound(tone, started, runs)
        worker = "warm worker" if started else "cold worker"
        print(f"  tone {tone.value:<6} {worker}: first sound {fmt(firsts)}  "
              f"(speech ready after {fmt(ready)})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    asyncio.run(main(parser.parse_args().runs))
