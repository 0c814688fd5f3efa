"""``ebc demo``: the simulator it starts ends with it, however the demo ends.

A real ``ebc demo`` runs on a small township (free ports, links under tmp_path); the test finds
the simulator among its child processes, ends the demo — SIGKILL, which the demo cannot catch, or
SIGTERM as a service manager would — and checks that the simulator process exits and its pty link
is gone. Waits are hang guards only, never timing claims.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml
from simkit import REPO, SimConfig, free_port, wait_until, write_sim_config

GUARD_S = 60.0


def _demo_config(tmp_path: Path) -> SimConfig:
    config = write_sim_config(tmp_path, rtu_terminals=2, tcp_terminals=0, fm=True)
    config.data.update(state_dir=str(tmp_path / "state"), api={"host": "127.0.0.1", "port": free_port()})
    config.path.write_text(yaml.safe_dump(config.data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return config


def _gone(proc: psutil.Process) -> bool:
    """Exited (a zombie counts: nothing of it runs any more, only its exit status waits)."""
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], psutil.Process, SimConfig]]:
    """A running ``ebc demo`` (banner printed) and its simulator process; leftovers killed after."""
    config = _demo_config(tmp_path)
    out = tmp_path / "demo.out"
    with open(out, "wb") as log:
        cmd = [sys.executable, "-m", "controller.app.cli", "demo", "--config", str(config.path)]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    started: list[psutil.Process] = []
    try:
        wait_until("the demo's banner", lambda: "is up on the simulator" in out.read_text(errors="replace")
                   or proc.poll() is not None, guard_s=GUARD_S)
        assert proc.poll() is None, out.read_text(errors="replace")
        started = psutil.Process(proc.pid).children(recursive=True)
        sims = [p for p in started if "sim" in p.cmdline()[3:5]]
        assert len(sims) == 1, [p.cmdline() for p in started]
        assert config.rtu_link.is_symlink()
        yield proc, sims[0], config
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for child in started:  # only what this test started, by pid
            with contextlib.suppress(psutil.NoSuchProcess):
                if not _gone(child):
                    child.kill()


def test_simulator_ends_when_the_demo_is_killed(demo):
    proc, sim, config = demo
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    wait_until("the simulator to exit", lambda: _gone(sim), guard_s=GUARD_S)
    assert not config.rtu_link.is_symlink() and not config.rtu_link.exists()
    assert config.fm_link is not None and not config.fm_link.is_symlink()


def test_simulator_stops_cleanly_when_the_demo_is_terminated(demo):
    proc, sim, config = demo
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(GUARD_S) == 0
    assert _gone(sim)  # the demo waited for it
    assert not config.rtu_link.is_symlink() and not config.rtu_link.exists()
