"""A township on the national interface: the alert test township (3 RTU + 1 TCP terminal + FM) with
resource codes, a ``national_platform`` section and fresh SM2 keys, plus the county platform
stand-in (simulator/platform_sim.py) registered with it — both sides over real HTTP on loopback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from alertkit import alert_township
from simkit import SimConfig, free_port

from controller.uplink.national.codes import propose_ebrid
from simulator.platform_sim import PlatformSim, generate_keypair

PLATFORM_EBRID = "43406210000000103010101"
GATEWAY_EBRID = propose_ebrid("340621105000", level=5, subtype=1, subtype_seq=1)


@dataclass
class NationalTownship:
    sim: SimConfig
    api_port: int
    listen_port: int
    platform_port: int
    gateway_public: str
    platform_private: str
    ebrids: dict[str, str]
    """Device id → its EBRID."""

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}/ebd"


def national_township(tmp_path: Path, *, heartbeat_s: float = 1.0, time_scale: float = 10.0,
                      health: dict[str, Any] | None = None, **national: Any) -> NationalTownship:
    """Write the township config; ``national`` overrides keys of the ``national_platform`` section."""
    api_port, listen_port, platform_port = free_port(), free_port(), free_port()
    gateway_private, gateway_public = generate_keypair()
    platform_private, platform_public = generate_keypair()
    key_file = tmp_path / "gateway-sm2.key"
    key_file.write_text(gateway_private + "\n", encoding="utf-8")
    key_file.chmod(0o600)
    sim = alert_township(tmp_path, api_port=api_port, time_scale=time_scale,
                         audio_output={"sink": "sim_line", "time_scale": time_scale})
    data = dict(sim.data)
    data["gateway"]["ebrid"] = GATEWAY_EBRID
    ebrids: dict[str, str] = {}
    seq: dict[str, int] = {}
    for dev in data["devices"]:
        subtype = 3 if dev["id"].startswith("fm") else 4
        seq[dev["area_code"]] = seq.get(dev["area_code"], 0) + 1
        dev["ebrid"] = ebrids[dev["id"]] = propose_ebrid(dev["area_code"], subtype=subtype,
                                                         subtype_seq=seq[dev["area_code"]])
    section: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": listen_port, "path": "/ebd", "allow": ["127.0.0.1/32"]},
        "upper": {"ebrid": PLATFORM_EBRID, "url": f"http://127.0.0.1:{platform_port}/ebd",
                  "keys": [{"cert_sn": "PLATFORM-SIM-01", "public_key": platform_public}]},
        "signing": {"private_key_file": str(key_file), "cert_sn": "GW-TEST-01"},
        "heartbeat_s": heartbeat_s, "retry_initial_s": 0.2, "retry_max_s": 1.0, "repeat": 1,
    }
    section.update({key: value for key, value in national.items() if value is not None})
    data["national_platform"] = section
    if health:
        data["health"] = {**data.get("health", {}), **health}
    sim.path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    sim.data.clear()
    sim.data.update(data)
    return NationalTownship(sim, api_port, listen_port, platform_port, gateway_public, platform_private,
                            ebrids)


@contextlib.contextmanager
def platform_for(town: NationalTownship) -> Iterator[PlatformSim]:
    """The county platform stand-in on the township's upper URL, with the gateway registered."""
    platform = PlatformSim(ebrid=PLATFORM_EBRID, private_key_hex=town.platform_private,
                           port=town.platform_port)
    platform.register_gateway(GATEWAY_EBRID, town.gateway_url, town.gateway_public)
    platform.start()
    try:
        yield platform
    finally:
        platform.stop()
