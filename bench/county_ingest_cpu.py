"""The county ingest's own cost, in one process, without a broker: messages per CPU-second.

    .venv/bin/python bench/county_ingest_cpu.py [--gateways 1000] [--reports 60000] [--repo DIR]

Feeds synthetic MQTT messages straight into :class:`county.ingest.Ingest` (its ``_drain`` and writer,
SQLite in a temporary folder) with one SSE client draining the picture's changes as the API would
encode them: first the retained re-read after a restart (per gateway status, birth and 20 device
states), then a stream of live reports like bench/county_scale.py's load window (70 % health
snapshots, 30 % a device.fault + device.state event pair with the device's new state). It reports
CPU seconds (user + system, every thread) rather than wall time, so two versions of the code can be
compared on a machine other work is sharing; paho's network thread is not included (no broker).
``--repo`` measures another checkout (e.g. ``git archive`` of an older commit).

``--broker`` measures the live reports through a real Mosquitto instead, paho's network thread
included: the ingest subscribes with a persistent session and stops, the messages are published
into that session (QoS 1, by a publisher that is then closed), and the ingest is started again and
drains them — CPU per message and the wall-clock rate of one county process that has the broker's
backlog to itself (the ceiling the end-to-end bench cannot show while the fleet shares the cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def health(gw: str, seq: int) -> bytes:
    line = {"kind": "rs485", "up": True, "requests": 1000, "timeouts": 0, "crc_errors": 0,
            "latency_avg_ms": 33.3, "poll": {"cycles": 100, "last_cycle_s": 2.1}}
    body = {"gateway": gw, "ts": time.time(), "uptime_s": 123.4,
            "process": {"pid": 12345, "cpu_percent": 3.5, "rss_mb": 67.0, "children_rss_mb": 0.0,
                        "threads": 6},
            "system": {"cpu_percent": 10.0, "cpus": 2, "memory_available_mb": 1500.0, "load_1m": 0.4},
            "disk": {"path": "/var/lib/ebc", "free_mb": 20000.0, "writable": True},
            "engine": {"current": None, "queue_depth": 0}, "outbox_depth": 0,
            "lines": {"line0": line, "line1": dict(line)},
            "devices": {"total": 20, "online": 20, "with_faults": 0, "by_state": {"normal": 20}},
            "faults": [],
            "outbox": {"depth": 0, "health_depth": 0, "dropped_health": 0, "dropped_events": 0,
                       "overflows": 0},
            "mqtt": {"broker": "mqtt://127.0.0.1:1883", "connects": 1}}
    return json.dumps({"seq": seq, "historical": False, "kind": "gateway.health", "ts": time.time(),
                       "data": body}).encode()


def state(dev: str, st: int, faults: list[dict[str, Any]]) -> bytes:
    return json.dumps({"id": dev, "name": f"终端{dev}", "village": "村", "area_code": "340621105201",
                       "kind": "ip_speaker", "state": st, "state_name": "故障" if st == 3 else "正常",
                       "online": True, "faults": faults, "ts": time.time()}).encode()


def report(seq: int, kind: str, data: dict[str, Any]) -> bytes:
    doc = {"seq": seq, "historical": False, "kind": kind, "ts": time.time(), "data": data}
    return json.dumps(doc).encode()


async def measure(gateways: int, reports: int, broker_mode: bool = False) -> None:
    import county.api as api
    from county.config import load_county_config
    from county.ingest import Ingest
    from county.picture import Picture
    from county.store import Store

    tmp = Path(tempfile.mkdtemp(prefix="ebc-county-cpu-"))
    broker = None
    url = "mqtt://127.0.0.1:1"
    if broker_mode:
        from mqttkit import Broker
        broker = Broker(tmp / "mosquitto").start()
        url = broker.url
    (tmp / "county.yaml").write_text(yaml.safe_dump({
        "county": {"id": "suixi", "name": "bench", "area_code": "340621000000"},
        "mqtt": {"brokers": [url], "prefix": "ebc", "keepalive_s": 60, "client_id": "county-cpu-bench"},
        "storage": {"url": "sqlite://county.sqlite3", "retention_days": 30},
        "api": {"host": "127.0.0.1", "port": 0}}))
    cfg = load_county_config(tmp / "county.yaml")
    store = Store.open(cfg.storage.url, cfg.sqlite_path)
    picture = Picture()
    picture.rebuild(store)
    ingest = Ingest(cfg, store, picture)
    queue = picture.subscriber_queue()
    sent = [0]

    async def sse_client() -> None:
        n = 0
        while True:
            change = await queue.get()
            n += 1
            sent[0] += len(api._sse(change, n))

    client = asyncio.create_task(sse_client())

    async def feed(msgs: list[tuple[str, bytes, bool]], burst: int) -> None:
        for i in range(0, len(msgs), burst):
            ingest._inbox.extend(msgs[i:i + burst])
            ingest._drain()
            await ingest._write_burst()
            await asyncio.sleep(0)
        await asyncio.sleep(1.1)  # held-back gap scans
        await ingest._write_burst()

    names = [f"gw-{i:04d}" for i in range(gateways)]
    retained: list[tuple[str, bytes, bool]] = []
    for gw in names:
        retained.append((f"ebc/{gw}/status", b"online", True))
        birth = {"gateway": {"name": gw, "area_code": "340621105000"},
                 "devices": [{"id": f"t{d:02d}", "name": "x", "village": "v",
                              "location": {"lat": 33.1, "lon": 116.5}} for d in range(20)]}
        retained.append((f"ebc/{gw}/birth", json.dumps(birth).encode(), True))
        retained += [(f"ebc/{gw}/devices/t{d:02d}/state", state(f"t{d:02d}", 1, []), True) for d in range(20)]
    c0, w0 = cpu(), time.perf_counter()
    await feed(retained, 500)
    c1, w1 = cpu(), time.perf_counter()
    print(f"retained re-read: {len(retained)} msgs, CPU {c1 - c0:.2f} s, wall {w1 - w0:.2f} s "
          f"→ {len(retained) / (c1 - c0):,.0f} msgs per CPU-second")

    rng = random.Random(1)
    seqs = dict.fromkeys(names, 1000)
    live: list[tuple[str, bytes, bool]] = []
    i = 0
    while len(live) < reports:
        gw = names[i % gateways]
        i += 1
        seqs[gw] += 1
        if rng.random() < 0.7:
            live.append((f"ebc/{gw}/health", health(gw, seqs[gw]), False))
            continue
        dev = f"t{rng.randrange(20):02d}"
        fault = {"fault": "amp_fault", "zone": None, "since": time.time(), "reason": "x",
                 "reason_zh": "功放故障"}
        live.append((f"ebc/{gw}/events", report(seqs[gw], "device.fault", {"device": dev, **fault}), False))
        seqs[gw] += 1
        changed = report(seqs[gw], "device.state", {"device": dev, "state": 3})
        live.append((f"ebc/{gw}/events", changed, False))
        live.append((f"ebc/{gw}/devices/{dev}/state", state(dev, 3, [fault]), False))
    if broker is not None:
        await through_broker(ingest, broker.port, live)
    else:
        c0, w0 = cpu(), time.perf_counter()
        await feed(live, 200)
        c1, w1 = cpu(), time.perf_counter()
        print(f"live reports: {len(live)} msgs, CPU {c1 - c0:.2f} s, wall {w1 - w0:.2f} s "
              f"→ {len(live) / (c1 - c0):,.0f} msgs per CPU-second; stored {ingest.stats.stored} reports, "
              f"SSE {sent[0] / 1e6:.1f} MB")
    client.cancel()
    store.close()
    if broker is not None:
        broker.stop()


async def through_broker(ingest: Any, port: int, live: list[tuple[str, bytes, bool]]) -> None:
    """Subscribe (persistent session), stop, publish ``live`` into the session, start and drain it."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    await ingest.start()
    async with asyncio.timeout(60):
        await ingest.connected.wait()
    await ingest.stop()
    pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="cpu-bench-publisher")
    pub.max_inflight_messages_set(1000)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    infos = [pub.publish(topic, payload, qos=1) for topic, payload, _ in live]
    for info in infos:
        info.wait_for_publish(120)
    pub.disconnect()
    pub.loop_stop()
    want = sum(1 for topic, _, _ in live if not topic.endswith("/state"))
    ingest = type(ingest)(ingest.cfg, ingest.store, ingest.picture)  # started again, as after a restart
    c0, w0 = cpu(), time.perf_counter()
    await ingest.start()
    while ingest.stats.stored < want:
        await asyncio.sleep(0.01)
    c1, w1 = cpu(), time.perf_counter()
    print(f"live reports through Mosquitto (paho included): {ingest.stats.received} msgs, "
          f"CPU {c1 - c0:.2f} s, "
          f"wall {w1 - w0:.2f} s → {ingest.stats.received / (c1 - c0):,.0f} msgs per CPU-second, "
          f"{ingest.stats.received / (w1 - w0):,.0f} msgs/s; stored {ingest.stats.stored} reports, "
          f"connects {ingest.stats.connects}, duplicates {ingest.stats.duplicates}")
    await ingest.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gateways", type=int, default=1000)
    p.add_argument("--reports", type=int, default=60000, help="live messages to feed")
    p.add_argument("--repo", default=str(Path(__file__).resolve().parent.parent),
                   help="the checkout whose county/ is measured")
    p.add_argument("--broker", action="store_true",
                   help="live reports through a real Mosquitto, paho's network thread included")
    opts = p.parse_args()
    sys.path.insert(0, opts.repo)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    asyncio.run(measure(opts.gateways, opts.reports, opts.broker))


if __name__ == "__main__":
    main()
