"""Fixtures shared by all tests: simulated hardware in its own process (see tests/simkit.py), and the
API in-process over a module's ``services`` fixture (built with tests/apikit.py's ``api_services``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from simkit import SimConfig, SimProcess, running_simulator, write_sim_config

from controller.core.actors import Role

if TYPE_CHECKING:
    from starlette.testclient import TestClient

    from controller.api.deps import ApiServices


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


@pytest.fixture
def client(services: ApiServices) -> Iterator[TestClient]:
    """The API over the module's ``services`` (startup and shutdown run)."""
    from starlette.testclient import TestClient

    from controller.api.app import create_app

    with TestClient(create_app(services)) as c:
        yield c


@pytest.fixture
def tokens(services: ApiServices) -> dict[str, str]:
    """One token per role, named ``<role>-1``: role value → the token."""
    return {role.value: services.store.create_token(f"{role.value}-1", role) for role in Role}
