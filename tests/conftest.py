"""Fixtures shared by all tests: simulated hardware in its own process (see tests/simkit.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from simkit import SimConfig, SimProcess, running_simulator, write_sim_config


@pytest.fixture
def sim_config(tmp_path: Path) -> SimConfig:
    """A small township config: 3 RTU terminals on one 9600-baud pty, 1 TCP terminal, 1 FM module."""
    return write_sim_config(tmp_path)


@pytest.fixture
def sim(sim_config: SimConfig) -> Iterator[SimProcess]:
    """``ebc sim`` running on ``sim_config`` as a subprocess; stopped with SIGTERM afterwards."""
    with running_simulator(sim_config) as proc:
        yield proc


@pytest.fixture(scope="module")
def module_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    """One simulator shared by a module's tests (faster); tests must clear the faults they raise."""
    config = write_sim_config(tmp_path_factory.mktemp("sim"))
    with running_simulator(config) as proc:
        yield proc
