"""Speech: text → WAV through pyttsx3 over espeak-ng, in one warmed worker process, with a cache.

Why a child process: pyttsx3 is not thread-safe (segfaults, mixed audio) and espeak-ng is C code
that can crash on odd input. The worker owns the only engine, handles one request at a time, and a
crash kills only the worker: the service restarts it and retries the request once. Why warm-up: a
new pyttsx3 engine can drop its first multi-sentence file (DESIGN §5), so every worker speaks a
throwaway text before it takes requests.

Why espeakng-loader: Debian 12's espeak-ng 1.51 spells Mandarin tone numbers out in English
("bao4" comes out as "bay four"); the 1.52 library in that PyPI package reads them as tones. The
worker loads it with RTLD_GLOBAL and points ESPEAK_DATA_PATH at its data before importing pyttsx3,
so pyttsx3's own ``dlopen("libespeak-ng.so.1")`` finds that copy and never the system's.

Protocol with the worker: JSON lines; requests on its stdin, replies on the file descriptor that
was its stdout (anything pyttsx3 or espeak print goes to stderr instead, so it cannot corrupt a
reply). Every request has an id; a reply to a request whose caller was cancelled is discarded.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import itertools
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from controller.core.errors import Invalid
from controller.speech.normalize import normalize

if TYPE_CHECKING:
    from controller.config import Config

log = logging.getLogger(__name__)

Language = Literal["zh", "en"]
VOICES: dict[str, str] = {"zh": "cmn", "en": "en-us"}
CACHE_VERSION = "espeak-ng-1.52/pyttsx3/1"
"""Part of every cache key: change it when the synthesis changes so old files are not reused."""
CACHE_SUBDIR = "speech-cache"
"""The speech cache under the gateway's ``state_dir``."""
START_TIMEOUT_S = 60.0
BASE_TIMEOUT_S = 20.0
TIMEOUT_PER_CHAR_S = 0.05
WARM_UP_TEXT = {"zh": "系统自检。语音合成准备就绪。", "en": "System check. Speech is ready."}


class TextTooLong(Invalid):
    """The text is longer than the configured speech limit (``speech.max_chars``); ``field`` ``text``."""

    def __init__(self, length: int, limit: int) -> None:
        self.length, self.limit = length, limit
        super().__init__(f"text is {length} characters long; speech takes at most {limit} characters "
                         f"(shorten it or split it into several broadcasts)", "text")


class SpeechError(RuntimeError):
    """Synthesis failed: the worker refused the text, or crashed twice on it."""


class _WorkerGone(Exception):
    """The worker died or hung during a request; it is restarted and the request retried once."""


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "is still running"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


class SpeechService:
    """Text to cached WAV files (22050 Hz mono) for ``zh`` and ``en``; one synthesis at a time."""

    def __init__(self, cache_dir: Path, rate_wpm: int = 150, max_chars: int = 2000) -> None:
        self.cache_dir = Path(cache_dir)
        self.rate_wpm = rate_wpm
        self.max_chars = max_chars
        self.restarts = 0
        """How often a worker had to be replaced after a crash or hang."""
        self.last_synthesis: dict[str, float] = {}
        """The last synthesis done (not a cache hit): audio ``seconds``, ``total_s`` as the caller
        waited, ``worker_s`` of that in the worker, ``espeak_s`` of that in espeak itself."""
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr_task: asyncio.Task[None] | None = None
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
        self._lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self._abandoned: dict[int, Path | None] = {}
        self._closed = False

    # -- public API -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker and warm it up now, so the first broadcast does not pay for it."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        async with self._lock:
            if not self._alive:
                await self._spawn()

    @property
    def worker_pid(self) -> int | None:
        """The worker's process id (for supervision and tests), None when none is running."""
        return self._proc.pid if self._alive and self._proc else None

    def check_length(self, text: str) -> None:
        """Raise :class:`TextTooLong` before anything is played, not when the speech is due."""
        if len(text) > self.max_chars:
            raise TextTooLong(len(text), self.max_chars)

    def cache_path(self, text: str, language: Language) -> Path:
        """Where the speech for ``text`` is (or will be) cached: keyed by spoken text, voice, rate."""
        voice = _voice(language)
        spoken = normalize(text, language)
        key = hashlib.sha256(json.dumps([CACHE_VERSION, voice, self.rate_wpm, spoken]).encode()).hexdigest()
        return self.cache_dir / f"{language}-{key[:32]}.wav"

    async def synthesize(self, text: str, language: Language) -> Path:
        """The WAV file speaking ``text``: from the cache, or synthesised (zh text normalised first)."""
        self.check_length(text)
        voice = _voice(language)
        spoken = normalize(text, language)
        if not spoken.strip():
            raise ValueError("there is no text to speak")
        path = self.cache_path(text, language)
        if _valid_wav(path):
            return path
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        async with self._lock:
            if _valid_wav(path):  # made by a caller that held the lock before us
                return path
            part = path.with_name(f"{path.stem}.{os.getpid()}.{next(self._ids)}.part")
            timeout = BASE_TIMEOUT_S + TIMEOUT_PER_CHAR_S * len(spoken)
            started = time.perf_counter()
            try:
                reply = await self._request({"op": "synth", "text": spoken, "voice": voice,
                                             "rate": self.rate_wpm, "path": str(part)}, timeout, part)
                os.replace(part, path)
                self.last_synthesis = {"total_s": time.perf_counter() - started,
                                       **{k: float(reply[k]) for k in ("seconds", "worker_s", "espeak_s")}}
            finally:
                with contextlib.suppress(FileNotFoundError):
                    part.unlink()
        return path

    async def phonemes(self, text: str, language: Language) -> str:
        """espeak-ng's phonemes (ASCII mnemonics, Mandarin tones as pitch contours such as 51 or 214)
        for the text as it would be spoken; clauses separated by newlines."""
        self.check_length(text)
        voice = _voice(language)
        async with self._lock:
            reply = await self._request({"op": "phonemes", "text": normalize(text, language), "voice": voice},
                                        BASE_TIMEOUT_S, None)
        return str(reply["phonemes"])

    async def stop(self) -> None:
        """Let the worker exit (end of its input); kill it if it does not within two seconds."""
        self._closed = True
        async with self._lock:
            await self._stop_worker(graceful=True)

    # -- the worker ---------------------------------------------------------------------------------

    @property
    def _alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def _spawn(self) -> None:
        if self._closed:
            raise SpeechError("the speech service is closed")
        self._stderr_tail.clear()
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from controller.speech.tts import worker_main; worker_main()",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            limit=1 << 20)
        self._abandoned.clear()
        self._stderr_task = asyncio.create_task(self._read_stderr(self._proc), name="speech worker stderr")
        try:
            ready = await self._read_reply(START_TIMEOUT_S)
        except _WorkerGone as exc:
            await self._stop_worker(graceful=False)
            raise SpeechError(f"the speech worker did not start: {exc}") from None
        if not ready.get("ok"):
            await self._stop_worker(graceful=False)
            raise SpeechError(f"the speech worker did not start: {ready.get('error')}")
        log.info("speech worker %d ready (espeak-ng %s, warm-up %.2f s)", self._proc.pid,
                 ready.get("espeak"), ready.get("warm_up_s", 0.0))

    async def _read_stderr(self, proc: asyncio.subprocess.Process) -> None:
        """Keep the worker's last words (a crash report) and log them at debug level."""
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            text = line.decode(errors="replace").rstrip()
            self._stderr_tail.append(text)
            log.debug("speech worker: %s", text)

    async def _stop_worker(self, *, graceful: bool) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None:
            if graceful and proc.stdin is not None:
                with contextlib.suppress(ConnectionError):
                    proc.stdin.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 2.0)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if self._stderr_task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._stderr_task, 1.0)
            self._stderr_task = None

    async def _read_reply(self, timeout: float) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        try:
            line = await asyncio.wait_for(self._proc.stdout.readline(), timeout)
        except TimeoutError:
            raise _WorkerGone(f"no answer within {timeout:.0f} s") from None
        if not line:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._proc.wait(), 2.0)
            last = f" (last output: {self._stderr_tail[-1]})" if self._stderr_tail else ""
            raise _WorkerGone(f"the worker {_describe_exit(self._proc.returncode)}{last}")
        try:
            return dict(json.loads(line))
        except ValueError:
            raise _WorkerGone(f"garbled reply from the worker: {line[:200]!r}") from None

    async def _exchange(self, request: dict[str, Any], timeout: float, part: Path | None) -> dict[str, Any]:
        """Send one request and wait for its reply, discarding replies to abandoned requests."""
        assert self._proc is not None and self._proc.stdin is not None
        rid = request["id"] = next(self._ids)
        self._abandoned[rid] = part  # until answered: a cancelled caller leaves it here
        try:
            if self._proc.stdin.is_closing():  # the other end is gone: say so, do not write
                raise BrokenPipeError("the pipe is closed")
            self._proc.stdin.write(json.dumps(request).encode() + b"\n")
            await self._proc.stdin.drain()
        except ConnectionError as exc:
            raise _WorkerGone(f"cannot write to the worker: {exc}") from None
        while True:
            reply = await self._read_reply(timeout)
            stale = self._abandoned.pop(reply.get("id", -1), None)
            if reply.get("id") == rid:
                return reply
            if stale is not None:  # the file of a request nobody waits for any more
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()

    async def _request(self, request: dict[str, Any], timeout: float, part: Path | None) -> dict[str, Any]:
        """One request to a live worker; a crash or hang restarts the worker and retries once."""
        failure = ""
        for attempt in (1, 2):
            if not self._alive:
                if self._proc is not None:
                    log.warning("speech worker %s while idle; starting a new one",
                                _describe_exit(self._proc.returncode))
                if self._proc is not None or attempt > 1:
                    self.restarts += 1
                await self._stop_worker(graceful=False)
                await self._spawn()
            try:
                reply = await self._exchange(dict(request), timeout, part)
            except _WorkerGone as exc:
                failure = str(exc)
                log.warning("speech worker failed (attempt %d): %s", attempt, failure)
                await self._stop_worker(graceful=False)
                continue
            if not reply.get("ok"):
                raise SpeechError(f"speech synthesis failed: {reply.get('error')}")
            return reply
        raise SpeechError(f"speech synthesis failed twice, giving up: {failure}")


def _voice(language: str) -> str:
    try:
        return VOICES[language]
    except KeyError:
        raise ValueError(f"language must be one of {', '.join(VOICES)}, not {language!r}") from None


def _valid_wav(path: Path) -> bool:
    """A complete cached file (written to a .part file and renamed, so a crash leaves none)."""
    try:
        with wave.open(str(path), "rb") as wav:
            return wav.getnframes() > 0
    except (FileNotFoundError, EOFError, wave.Error):
        return False


def wav_seconds(path: Path) -> float:
    """Duration of a WAV file."""
    with wave.open(str(path), "rb") as wav:
        return wav.getnframes() / wav.getframerate()


# -- the worker process ---------------------------------------------------------------------------------


class _Espeak:
    """The worker's only pyttsx3 engine and a ctypes handle on the very same espeak-ng library.

    pyttsx3 runs espeak-ng in its asynchronous (AUDIO_OUTPUT_RETRIEVAL) mode: espeak has its own
    thread and command queue, and the rate set through pyttsx3 travels through that queue. pyttsx3's
    ``runAndWait`` begins by cancelling whatever espeak still has queued, so a rate set just before
    it is sometimes dropped and the synthesis cancelled — the "dropped first file" of a new engine,
    and, we found, speech at the wrong speed now and then. So every synthesis waits for espeak's
    queue to drain before it starts, and checks afterwards that it completed at the rate and in the
    voice asked for; otherwise it is done again.
    """

    ATTEMPTS = 3
    IDLE_TIMEOUT_S = 10.0
    ESPEAK_RATE = 1  # espeakRATE in speak_lib.h

    def __init__(self) -> None:
        import ctypes

        import espeakng_loader

        self.ctypes = ctypes
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path(), mode=ctypes.RTLD_GLOBAL)
        os.environ["ESPEAK_DATA_PATH"] = espeakng_loader.get_data_path()
        import pyttsx3
        from pyttsx3.drivers import _espeak

        self.engine = pyttsx3.init("espeak")
        ours = ctypes.cast(self.lib.espeak_Info, ctypes.c_void_p).value
        theirs = ctypes.cast(_espeak.dll.espeak_Info, ctypes.c_void_p).value
        if ours != theirs:
            raise RuntimeError("pyttsx3 loaded a different espeak-ng library than espeakng-loader's")
        self.lib.espeak_Info.restype = ctypes.c_char_p
        self.lib.espeak_Info.argtypes = [ctypes.c_void_p]
        self.lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        pointer = ctypes.POINTER(ctypes.c_void_p)
        self.lib.espeak_TextToPhonemes.argtypes = [pointer, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_GetParameter.argtypes = [ctypes.c_int, ctypes.c_int]
        self.version = (self.lib.espeak_Info(None) or b"?").decode()
        self.marks: dict[str, float] = {}
        """When espeak started and finished the last utterance: how much of a request is espeak's."""
        self.completed = False
        self.engine.connect("started-utterance", self._started)
        self.engine.connect("finished-utterance", self._finished)

    def _started(self, **_: object) -> None:
        self.marks["start"] = time.perf_counter()

    def _finished(self, completed: bool = False, **_: object) -> None:
        self.marks["end"] = time.perf_counter()
        self.completed = bool(completed)

    def _idle(self) -> None:
        """Wait until espeak's own thread has nothing queued or running."""
        deadline = time.monotonic() + self.IDLE_TIMEOUT_S
        while self.lib.espeak_IsPlaying():
            if time.monotonic() > deadline:
                raise RuntimeError("espeak-ng stays busy")
            time.sleep(0.0005)

    def _speak(self, text: str, voice: str, rate: int, path: str) -> bool:
        """One attempt; True if it completed, in ``voice`` at ``rate``, and wrote a file."""
        self._idle()
        self.engine.setProperty("voice", voice)
        self.engine.setProperty("rate", rate)
        self._idle()  # the rate is still in espeak's queue: runAndWait would cancel it
        self.marks.clear()
        self.completed = False
        self.engine.save_to_file(text, path)
        self.engine.runAndWait()
        self._idle()
        in_voice = str(self.engine.getProperty("voice") or "").split("/")[-1] == voice
        at_rate = self.lib.espeak_GetParameter(self.ESPEAK_RATE, 1) == rate
        return self.completed and in_voice and at_rate and _valid_wav(Path(path))

    def synthesize(self, text: str, voice: str, rate: int, path: str) -> dict[str, float]:
        """Speak ``text`` into ``path``. Returns the audio length and timings: the whole request in
        the worker, and espeak's synthesis within it."""
        started = time.perf_counter()
        for _ in range(self.ATTEMPTS):
            if self._speak(text, voice, rate, path):
                return {"seconds": wav_seconds(Path(path)), "worker_s": time.perf_counter() - started,
                        "espeak_s": self.marks.get("end", 0.0) - self.marks.get("start", 0.0)}
            print(f"synthesis attempt incomplete (completed={self.completed}); again", file=sys.stderr)
        raise RuntimeError(f"espeak-ng did not complete this text in {self.ATTEMPTS} attempts")

    def phonemes(self, text: str, voice: str) -> str:
        """espeak_TextToPhonemes clause by clause (UTF-8 text in, ASCII phoneme mnemonics out)."""
        ctypes = self.ctypes
        self._idle()
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r}")
        buffer = ctypes.create_string_buffer(text.encode())
        pointer = ctypes.c_void_p(ctypes.addressof(buffer))
        clauses = []
        while pointer.value:
            out = self.lib.espeak_TextToPhonemes(ctypes.byref(pointer), 1, 0)  # espeakCHARS_UTF8, mnemonics
            clauses.append((out or b"").decode(errors="replace").strip())
        return "\n".join(c for c in clauses if c)

    def warm_up(self) -> None:
        """Speak a throwaway multi-sentence text in each voice (a new engine may drop its first)."""
        with tempfile.TemporaryDirectory(prefix="ebc-tts-warm-") as tmp:
            for language, text in WARM_UP_TEXT.items():
                self._speak(text, VOICES[language], 150, str(Path(tmp) / f"{language}.wav"))


def worker_main() -> None:
    """Entry point of the worker process: serve JSON-line requests until stdin closes."""
    reply_fd = os.dup(1)
    os.dup2(2, 1)  # pyttsx3 prints "Audio saved to ..."; espeak may write too: keep replies clean
    out = os.fdopen(reply_fd, "w", encoding="utf-8", buffering=1)
    started = time.monotonic()
    try:
        espeak = _Espeak()
        espeak.warm_up()
    except Exception as exc:
        out.write(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}) + "\n")
        return
    out.write(json.dumps({"ok": True, "espeak": espeak.version,
                          "warm_up_s": round(time.monotonic() - started, 3)}) + "\n")
    for line in sys.stdin:
        rid = None
        try:
            request = json.loads(line)
            rid = request.get("id")
            reply: dict[str, Any] = {"id": rid, "ok": True}
            if request["op"] == "synth":
                reply |= espeak.synthesize(request["text"], request["voice"], int(request["rate"]),
                                           request["path"])
            elif request["op"] == "phonemes":
                reply["phonemes"] = espeak.phonemes(request["text"], request["voice"])
            else:
                raise ValueError(f"unknown op {request['op']!r}")
        except Exception as exc:
            reply = {"id": rid, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")


# -- ebc say ----------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """Per-user speech cache for ``ebc say`` without a config: $XDG_CACHE_HOME/ebc/speech."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ebc" / "speech"


def say_command(text: str, language: Language, output: Path, cfg: Config | None = None) -> int:
    """``ebc say``: speak ``text`` into ``output`` as the gateway would (normalised, same voice)."""
    if cfg is not None:
        service = SpeechService(Path(cfg.state_dir) / CACHE_SUBDIR, cfg.speech.rate_wpm, cfg.speech.max_chars)
    else:
        service = SpeechService(default_cache_dir())

    async def run() -> Path:
        try:
            return await service.synthesize(text, language)
        finally:
            await service.stop()

    try:
        path = asyncio.run(run())
        output.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, output)
    except (ValueError, SpeechError, OSError) as exc:
        print(f"ebc say: {exc}", file=sys.stderr)
        return 1
    spoken = normalize(text, language)
    print(f"{output}: {wav_seconds(output):.1f} s, voice {VOICES[language]}"
          + (f", spoken as: {spoken}" if spoken != text else ""))
    return 0
