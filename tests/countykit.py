"""Test helpers for the county centre: a gateway that speaks docs/mqtt.md, a PostgreSQL server,
county configs, an async wait with a hang guard, and real townships (``ebc run`` on the simulator)
trusting given county keys.

``FakeGateway`` is a paho client that publishes exactly what docs/mqtt.md shows: the Will
``offline`` (retained), ``online``, the retained birth and device states, then reports with a
``seq`` on ``events``/``broadcasts/<id>``/``health``. ``freeze()`` stops its network loop without a
DISCONNECT (a hung or unplugged gateway: the broker fires the Will after 1.5 × keepalive).

``PostgresServer`` runs Debian's PostgreSQL 15 (initdb + pg_ctl) on a free port; as root it runs as
the ``postgres`` user in a directory of its own (root may not run initdb, and pytest's tmp_path is
not readable by other users).
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import yaml
from mqttkit import HANG_GUARD_S, Broker
from paho.mqtt.enums import CallbackAPIVersion
from simkit import SimConfig, free_port, write_sim_config

PG_BIN = Path("/usr/lib/postgresql/15/bin")


async def until(what: str, check: Callable[[], Any], timeout: float = HANG_GUARD_S) -> Any:
    """Poll ``check`` on the event loop until truthy (a hang guard, never a timing claim)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.02)


def device(dev_id: str, village: str, lat: float, lon: float, area: str = "340621105201") -> dict[str, Any]:
    return {"id": dev_id, "name": f"{village}广场", "village": village, "area_code": area,
            "location": {"lat": lat, "lon": lon}, "line": "rs485-1", "line_type": "serial",
            "profile": "ebt-1", "kind": "terminal", "unit_id": 1, "zones": [1, 2]}


MAINS_LOST = {"fault": "mains_lost", "zone": None, "reason": "mains power lost, on battery 13.60 V",
              "reason_zh": "市电中断，电池供电 13.60 V", "values": {"battery_v": 13.6, "mains_v": 0.0}}
TAMPER = {"fault": "tamper", "zone": None, "reason": "cabinet opened (tamper switch)",
          "reason_zh": "机箱被打开（防拆报警）", "values": {}}


class FakeGateway:
    """One township gateway on MQTT, as docs/mqtt.md describes it."""

    def __init__(self, broker: Broker, gw_id: str, name: str = "濉溪县刘桥镇应急广播网关",
                 devices: list[dict[str, Any]] | None = None, *, keepalive: int = 30, prefix: str = "ebc",
                 first_seq: int | None = None) -> None:
        self.broker, self.id, self.name = broker, gw_id, name
        self.root = f"{prefix}/{gw_id}"
        self.devices = devices if devices is not None else [
            device("t01", "刘桥村", 33.9012, 116.7421), device("t02", "前李村", 33.9101, 116.7602),
            device("t03", "后李村", 33.9155, 116.7710)]
        self.keepalive = keepalive
        self.seq = first_seq if first_seq is not None else int(time.time() * 1000)
        self.dropped_health = 0
        self.states: dict[str, dict[str, Any]] = {}
        self._connected = threading.Event()
        self.client = self._client()

    def _client(self) -> paho.Client:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.id, clean_session=True,
                             protocol=paho.MQTTv311)
        client.will_set(f"{self.root}/status", "offline", qos=1, retain=True)
        client.on_connect = lambda c, u, f, reason, p: (not reason.is_failure) and self._connected.set()
        return client

    # -- life cycle ---------------------------------------------------------------------------------

    def connect(self) -> FakeGateway:
        """Connect and announce: online, birth, every device state (all retained)."""
        self._connected.clear()
        self.client.connect("127.0.0.1", self.broker.port, keepalive=self.keepalive)
        self.client.loop_start()
        assert self._connected.wait(HANG_GUARD_S), "fake gateway not connected"
        self._pub("status", b"online", retain=True)
        self._pub("birth", self.birth(), retain=True)
        for dev in self.devices:
            self.set_state(dev["id"], self.states.get(dev["id"], {}).get("state", 1),
                           self.states.get(dev["id"], {}).get("faults", []))
        return self

    def stop(self) -> None:
        """Graceful: ``offline`` published, clean DISCONNECT (the broker drops the Will)."""
        self._pub("status", b"offline", retain=True)
        self.client.disconnect()
        self.client.loop_stop()

    def freeze(self) -> None:
        """Hang without a DISCONNECT: no more packets, the socket stays open; the Will fires later."""
        self.client.loop_stop()

    def close_socket(self) -> None:
        sock = self.client.socket()
        if sock is not None:
            sock.close()

    # -- payloads -----------------------------------------------------------------------------------

    def birth(self) -> dict[str, Any]:
        return {"gateway": {"id": self.id, "name": self.name, "area_code": "340621105000",
                            "location": {"lat": 33.905, "lon": 116.78}},
                "version": "0.1.0", "started_at": time.time(), "ts": time.time(),
                "topics": {"root": self.root}, "devices": self.devices}

    def set_state(self, dev_id: str, state: int = 1, faults: list[dict[str, Any]] | None = None) -> None:
        dev = next(d for d in self.devices if d["id"] == dev_id)
        faults = [{**f, "since": f.get("since", time.time())} for f in faults or []]
        names = {1: "normal", 2: "off", 3: "fault", 4: "recovered", 5: "broadcasting"}
        doc = {"id": dev_id, "name": dev["name"], "village": dev["village"], "area_code": dev["area_code"],
               "line": dev["line"], "kind": "terminal", "online": state != 2, "last_seen": time.time(),
               "failure": None, "values": {"mains_ok": not faults, "volume": 50},
               "state": state, "state_name": names.get(state), "faults": faults, "ts": time.time()}
        self.states[dev_id] = doc
        self._pub(f"devices/{dev_id}/state", doc, retain=True)

    def report(self, topic: str, kind: str, data: dict[str, Any], *, seq: int | None = None,
               historical: bool = False, ts: float | None = None) -> int:
        """One outbox report (``seq`` first, as the gateway stamps it); returns its seq."""
        if seq is None:
            seq = self.seq
            self.seq += 1
        body = {"seq": seq, "historical": historical, "kind": kind, "ts": ts or time.time(), "data": data}
        self._pub(topic, body)
        return seq

    def fault(self, dev_id: str, fault: dict[str, Any] = MAINS_LOST) -> int:
        dev = next(d for d in self.devices if d["id"] == dev_id)
        data = {"device": dev_id, "kind": "terminal", "name": dev["name"], "village": dev["village"], **fault,
                "since": time.time()}
        seq = self.report("events", "device.fault", data)
        self.set_state(dev_id, 3, [fault])
        return seq

    def health(self, dropped_health: int | None = None) -> int:
        if dropped_health is not None:
            self.dropped_health = dropped_health
        return self.report("health", "gateway.health", {
            "gateway": self.id, "uptime_s": 60.0, "devices": {"total": len(self.devices)},
            "outbox": {"depth": 0, "health_depth": 0, "dropped_health": self.dropped_health,
                       "dropped_events": 0, "overflows": 0},
            "mqtt": {"broker": self.broker.url, "connects": 1}})

    def skip(self, n: int = 1) -> None:
        """Leave ``n`` seqs out (as a dropped report would)."""
        self.seq += n

    def raw(self, suffix: str, payload: bytes, retain: bool = False) -> None:
        self._pub(suffix, payload, retain=retain)

    def _pub(self, suffix: str, payload: Any, retain: bool = False) -> None:
        if not isinstance(payload, bytes):
            payload = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        info = self.client.publish(f"{self.root}/{suffix}", payload, qos=1, retain=retain)
        info.wait_for_publish(HANG_GUARD_S)


# -- county configs -----------------------------------------------------------------------------------


def write_county_config(folder: Path, broker: Broker, *, storage_url: str | None = None,
                        client_id: str | None = None, share_group: str | None = None,
                        outline: dict[str, Any] | None = None,
                        signing: dict[str, Any] | None = None) -> Path:
    """A county config; ``signing`` as in county.yaml (its key file relative to ``folder``)."""
    folder.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "county": {"id": "suixi", "name": "濉溪县应急广播中心", "area_code": "340621000000"},
        "mqtt": {"brokers": [broker.url], "prefix": "ebc", "keepalive_s": 5, "client_id": client_id,
                 "share_group": share_group},
        "storage": {"url": storage_url or "sqlite://county.sqlite3", "retention_days": 30},
        "api": {"host": "127.0.0.1", "port": 0},
    }
    if signing is not None:
        data["signing"] = signing
    if outline is not None:
        (folder / "outline.geojson").write_text(json.dumps(outline), encoding="utf-8")
        data["map"] = {"outline_geojson": "outline.geojson"}
    path = folder / "county.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


# -- PostgreSQL ---------------------------------------------------------------------------------------


class PostgresServer:
    """Debian's PostgreSQL 15 on a free loopback port, trust auth, superuser ``ebc``."""

    def __init__(self) -> None:
        self.as_root = os.getuid() == 0
        self.folder = Path(tempfile.mkdtemp(prefix="ebc-county-pg-"))
        self.data = self.folder / "data"
        self.port = free_port()
        self.user = "postgres" if self.as_root else pwd.getpwuid(os.getuid()).pw_name
        if self.as_root:
            shutil.chown(self.folder, "postgres", "postgres")
            self.folder.chmod(0o700)
        self._dbs = 0

    def _run(self, *cmd: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self.as_root else []
        subprocess.run([*prefix, *cmd], check=True, capture_output=True, timeout=HANG_GUARD_S)

    def start(self) -> PostgresServer:
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "ebc", "-E", "UTF8",
                  "--no-sync")
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "log"), "-w",
                  "-o", f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off",
                  "start")
        return self

    def stop(self) -> None:
        try:
            self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://ebc@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        self._dbs += 1
        name = f"county{self._dbs}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)


def postgres_available() -> str | None:
    """Why PostgreSQL tests cannot run here, or None."""
    if not (PG_BIN / "initdb").exists():
        return f"PostgreSQL 15 binaries not found in {PG_BIN} (apt install postgresql)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]')"
    return None


# -- real townships -----------------------------------------------------------------------------------

PREFIX = "ebc"
TOWNS = {"gw-340621105": "340621105000", "gw-340621106": "340621106000", "gw-340621107": "340621107000"}
COUNTY_CODE = "340621000000"


def township(root: Path, broker: Broker, gw_id: str, town: str, keys: list[dict[str, Any]]
             ) -> tuple[SimConfig, Path, int]:
    """Two loudspeaker terminals in two villages of ``town``, reporting to ``broker``, trusting ``keys``
    (run it with simkit's ``SimProcess(sim)`` and ``Daemon(path, port, log)``)."""
    root.mkdir()
    sim = write_sim_config(root, rtu_terminals=2, tcp_terminals=0, fm=False, time_scale=10.0)
    data = dict(sim.data)
    data["gateway"] = {**data["gateway"], "id": gw_id, "area_code": town}
    for i, dev in enumerate(data["devices"]):
        dev["area_code"] = f"{town[:9]}{201 + i:03d}"
    port = free_port()
    data.update(state_dir=str(root / "state"), api={"host": "127.0.0.1", "port": port},
                audio_output={"sink": "sim_line", "time_scale": 5.0},
                health={"offline_after_s": 3, "line_check_interval_s": 0, "fault_recovered_hold_s": 1,
                        "report_interval_s": 3600},
                mqtt={"brokers": [broker.url], "prefix": PREFIX, "reconnect_min_s": 0.2,
                      "reconnect_max_s": 1.0, "health_interval_s": 60},
                county={"max_skew_s": 300, "keys": keys})
    sim.data.clear()
    sim.data.update(data)
    set_county_keys(sim, keys)
    return sim, sim.path, port


def set_county_keys(sim: SimConfig, keys: list[dict[str, Any]]) -> None:
    """Rewrite the gateway's ``county.keys`` (it reads them when it starts)."""
    sim.data["county"] = {"max_skew_s": 300, "keys": keys}
    sim.path.write_text(yaml.safe_dump(sim.data, allow_unicode=True, sort_keys=False), encoding="utf-8")


def keygen_text(key_type: str, path: Path) -> str:
    """A new county private key written to ``path``; its text."""
    from county.commands import keygen

    keygen(key_type, path)  # type: ignore[arg-type]
    return path.read_text()
