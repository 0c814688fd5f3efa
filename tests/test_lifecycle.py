"""controller/core/lifecycle.py, the daemon's one list of services and the alert ingress."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from controller.alerts.ingress import AlertIngress
from controller.app.daemon import Daemon
from controller.config import load_config
from controller.core.actors import Actor
from controller.core.lifecycle import Service, cancel_and_wait

DEMO = Path(__file__).resolve().parent.parent / "config" / "demo.yaml"


async def test_cancel_and_wait_ends_every_task_and_logs_failures(caplog: pytest.LogCaptureFixture):
    async def forever() -> None:
        await asyncio.Event().wait()

    async def fails_when_cancelled() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            raise RuntimeError("broken cleanup")

    done = asyncio.create_task(asyncio.sleep(0))
    await done
    tasks = [asyncio.create_task(forever()), asyncio.create_task(fails_when_cancelled(), name="bad")]
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR, logger="controller.core.lifecycle"):
        await cancel_and_wait(*tasks, None, done)
    assert all(t.done() for t in tasks)
    assert [r.getMessage() for r in caplog.records] == ["background task bad failed"]


async def test_daemon_parts_are_services_in_dependency_order(tmp_path: Path):
    cfg = load_config(DEMO)
    cfg.state_dir = str(tmp_path / "state")
    daemon = Daemon(cfg)
    try:
        names = [name for name, _ in daemon.parts]
        assert all(isinstance(part, Service) for _, part in daemon.parts)
        assert names.index("hardware") < names.index("health") < names.index("engine")
        assert names.index("engine") < names.index("alert inbox") < names.index("alert ingress")
        assert names.index("alert ingress") < names.index("feeds") < names.index("api")
        if daemon.reporter is not None:  # stops last: the engine's final events still go out
            assert names[0] == "mqtt reporter" and names.index("county commands") > names.index("engine")
    finally:
        await daemon.stop()  # nothing started: only the journal and outbox are closed


class _Inbox:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def ingest(self, document: bytes | str, *, source: str, actor: Actor,
                     source_level: str | None = None) -> dict[str, Any]:
        self.calls.append({"source": source, "actor": actor.name, "via": actor.via, "level": source_level})
        if document == b"bad":
            raise ValueError("not CAP")
        return {"id": "a1", "disposition": "recorded"}


async def test_alert_ingress_says_who_each_source_counts_as():
    inbox = _Inbox()
    ingress = AlertIngress(inbox)
    ingress.from_mqtt(b"<alert/>", "county/alerts")  # before start: the inbox is not running yet
    await ingress.start()
    await ingress.from_feed(b"<alert/>", "feed:cma https://ex.org/f", "national")
    await ingress.from_county_command(b"<alert/>", Actor(name="county-ed", via="county"), "city")
    ingress.from_mqtt(b"<alert/>", "county/alerts")
    ingress.from_mqtt(b"bad", "county/alerts")  # refused by the inbox: logged, nobody to answer
    for _ in range(5):
        await asyncio.sleep(0)
    await ingress.stop()
    assert inbox.calls == [
        {"source": "feed:cma https://ex.org/f", "actor": "feed:cma", "via": "cap", "level": "national"},
        {"source": "county:county-ed", "actor": "county-ed", "via": "county", "level": "city"},
        {"source": "mqtt:county/alerts", "actor": "county-mqtt", "via": "county", "level": "county"},
        {"source": "mqtt:county/alerts", "actor": "county-mqtt", "via": "county", "level": "county"},
    ]
    ingress.from_mqtt(b"<alert/>", "county/alerts")  # after stop: dropped again
    assert len(inbox.calls) == 4
