"""The ``audio_output`` and ``speech`` sections: how a program is spoken and where its audio goes."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from controller.config.common import Strict


class AudioOutput(Strict):
    """Where the gateway's program audio goes (the line-out that feeds amplifiers and the FM)."""

    sink: Literal["sim_line", "alsa", "wav"] = Field(
        default="sim_line",
        description="sim_line: the simulator's audio line; alsa: a sound card; wav: files")
    host: str = Field(default="127.0.0.1", description="sim_line: the simulator's audio host")
    port: int | None = Field(default=None, ge=1, le=65535,
                             description="sim_line: audio port (default: simulator.audio.port)")
    alsa_device: str = Field(default="default", description="alsa: PCM device name, e.g. hw:0,0")
    wav_dir: str | None = Field(default=None, description="wav: directory the played programs go to")
    sample_rate: int = Field(default=16000, ge=8000, le=48000)
    time_scale: float = Field(default=1.0, gt=0, le=100,
                              description="Play faster than real time (tests and simulator only)")


class SpeechSettings(Strict):
    rate_wpm: int = Field(default=150, ge=60, le=400, description="Speaking rate, words per minute")
    max_chars: int = Field(default=2000, ge=1, le=10000, description="Longest text accepted for speech")
