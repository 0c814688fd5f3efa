"""Outbox: events per second flushed to the county after an outage, and events surviving kill -9.

Flush: with the broker down, N events go through the real path — ``EventBus.publish`` → the
reporter's synchronous listener → ``Outbox.append`` (kept rows, ``synchronous=FULL``). Then the
broker (Debian's mosquitto, started here on a free loopback port) comes back and the reporter
flushes: QoS 1, a window of ``inflight`` unacknowledged messages, each row deleted on its PUBACK
(deletes batched per PUBACK burst, ``synchronous=NORMAL``). A subscriber in its own process
(persistent session, so it misses nothing across the broker restart) counts distinct seqs.
Printed per window size: append rate, gateway flush rate (connected → outbox empty) and
end-to-end rate (connected → subscriber has all N). ``--durable-acks`` commits deletes with FULL
to show what that fsync per burst costs.

Kill -9: a writer process appends events through the same path and prints each seq once
``publish`` has returned; it is killed with SIGKILL mid-stream. Counted: seqs it confirmed, how
many of them are in the outbox file afterwards, and how many reach the subscriber when a fresh
reporter flushes that file.

Run: .venv/bin/python bench/outbox_flush.py [--events 20000] [--inflight 20 100 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the same broker and township helpers the tests use

import yaml  # noqa: E402
from mqttkit import Broker  # noqa: E402
from simkit import write_sim_config  # noqa: E402

from controller.config import Config, load_config  # noqa: E402
from controller.core.events import DeviceFault, EventBus  # noqa: E402
from controller.devices.registry import DeviceRegistry  # noqa: E402
from controller.uplink.mqtt import MqttReporter  # noqa: E402
from controller.uplink.outbox import Outbox, OutboxLimits  # noqa: E402

SUBSCRIBER = r"""
import json, sys, time
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
port, topic, want, cid = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
seen, total = set(), 0
c = paho.Client(CallbackAPIVersion.VERSION2, client_id=cid, clean_session=False)
c.reconnect_delay_set(0.05, 0.2)
c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(topic, qos=1)
c.on_subscribe = lambda *a: print("ready", flush=True)
def on_message(cl, u, m):
    global total
    total += 1
    seen.add(json.loads(m.payload)["seq"])
    if len(seen) == want:
        print(json.dumps({"done": time.time(), "messages": total, "distinct": len(seen)}), flush=True)
c.on_message = on_message
c.connect("127.0.0.1", port)
c.loop_forever(retry_first_connection=True)
"""

WRITER = r"""
import sys
from controller.config import load_config
from controller.devices.registry import DeviceRegistry
from controller.core.events import DeviceFault, EventBus
from controller.uplink.mqtt import MqttReporter
from controller.uplink.outbox import Outbox
cfg = load_config(sys.argv[1])
bus, outbox = EventBus(), Outbox.in_state_dir(cfg.state_dir)
MqttReporter(cfg, bus, outbox, DeviceRegistry(cfg))  # its listener writes every event to the outbox
i = 0
while True:
    bus.publish(DeviceFault(device_id="rtu1", device_kind="terminal", name="rtu1", village="",
                            fault="line_open", zone=1, reason="speaker line open", reason_zh="",
                            values={"n": i}, since=0.0))
    sys.stdout.write(f"{outbox.last_seq()}\n")
    sys.stdout.flush()
    i += 1
"""


def line_open(n: int) -> DeviceFault:
    """The event the flush sends N of, numbered in its ``values``."""
    return DeviceFault(device_id="rtu1", device_kind="terminal", name="rtu1", village="", fault="line_open",
                       zone=1, reason="speaker line open", reason_zh="", values={"n": n}, since=0.0)


class DurableAcks(Outbox):
    """The outbox with PUBACK deletes committed as FULL (an fsync per burst), for comparison."""

    durable_acks = True


def township(folder: Path, broker: Broker, inflight: int) -> Config:
    sim = write_sim_config(folder, rtu_terminals=3, tcp_terminals=0, fm=False)
    data = {**sim.data, "state_dir": str(folder / "state"),
            "mqtt": {"brokers": [broker.url], "reconnect_min_s": 0.05, "reconnect_max_s": 0.2,
                     "health_interval_s": 86400, "inflight": inflight, "outbox_max_rows": 1_000_000}}
    path = folder / "gw.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return load_config(path)


class County:
    """The counting subscriber process."""

    def __init__(self, broker: Broker, topic: str, want: int) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", SUBSCRIBER, str(broker.port), topic, str(want),
                                      f"county-{time.monotonic_ns()}"], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("subscriber did not start")

    def result(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        while line.strip() == "ready":  # it re-subscribes after the broker restart
            line = self.proc.stdout.readline()
        return json.loads(line)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


async def flush_run(folder: Path, events: int, inflight: int, durable_acks: bool) -> dict[str, float]:
    broker = Broker(folder / "broker", persistent=True).start()
    cfg = township(folder, broker, inflight)
    county = County(broker, f"ebc/{cfg.gateway.id}/events", events)
    broker.stop()
    bus = EventBus()
    outbox = (DurableAcks if durable_acks else Outbox).in_state_dir(cfg.state_dir, OutboxLimits(
        max_rows=1_000_000))
    reporter = MqttReporter(cfg, bus, outbox, DeviceRegistry(cfg))
    await reporter.start()
    t0 = time.perf_counter()
    for i in range(events):
        bus.publish(line_open(i))
    append_s = time.perf_counter() - t0
    depth = outbox.depth
    broker.start()
    while not reporter.connected:
        await asyncio.sleep(0.001)
    connected = time.time()
    while outbox.depth:
        await asyncio.sleep(0.001)
    emptied = time.time()
    got = await asyncio.to_thread(county.result)
    await reporter.stop()
    outbox.close()
    county.close()
    broker.stop()
    return {"appended": depth, "append_per_s": events / append_s, "flush_s": emptied - connected,
            "flush_per_s": depth / (emptied - connected), "e2e_s": got["done"] - connected,
            "e2e_per_s": got["distinct"] / (got["done"] - connected),
            "duplicates": got["messages"] - got["distinct"]}


async def kill9_run(folder: Path, seconds: float) -> dict[str, int]:
    broker = Broker(folder / "broker")  # not running while the writer writes
    cfg = township(folder, broker, 100)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(cfg.path)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    assert writer.stdout is not None
    confirmed: list[int] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = writer.stdout.readline()
        if not line:
            break
        confirmed.append(int(line))
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    confirmed += [int(s) for s in writer.stdout.read().split()]
    outbox = Outbox.in_state_dir(cfg.state_dir)
    stored = {r.seq for r in outbox.pending(limit=10_000_000)}
    survived = len(set(confirmed) & stored)
    broker.start()
    county = County(broker, f"ebc/{cfg.gateway.id}/events", len(stored))
    reporter = MqttReporter(cfg, EventBus(), outbox, DeviceRegistry(cfg))
    await reporter.start()
    got = await asyncio.to_thread(county.result)
    await reporter.stop()
    outbox.close()
    county.close()
    broker.stop()
    return {"confirmed": len(confirmed), "survived": survived, "lost": len(confirmed) - survived,
            "stored": len(stored), "delivered": got["distinct"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--inflight", type=int, nargs="+", default=[20, 100, 500])
    parser.add_argument("--durable-acks", action="store_true", help="commit PUBACK deletes with FULL")
    parser.add_argument("--kill-after", type=float, default=3.0,
                        help="seconds the writer runs before kill -9")
    args = parser.parse_args()
    print(f"outbox flush, {args.events} events, acks {'FULL' if args.durable_acks else 'NORMAL'}")
    print("| inflight | append/s | gateway flush | flush/s | subscriber has all | end-to-end/s "
          "| duplicates |")
    print("|---|---|---|---|---|---|---|")
    for inflight in args.inflight:
        with tempfile.TemporaryDirectory(prefix="ebc-bench-") as tmp:
            r = asyncio.run(flush_run(Path(tmp), args.events, inflight, args.durable_acks))
        print(f"| {inflight} | {r['append_per_s']:,.0f} | {r['flush_s']:.2f} s | {r['flush_per_s']:,.0f} | "
              f"{r['e2e_s']:.2f} s | {r['e2e_per_s']:,.0f} | {r['duplicates']:.0f} |", flush=True)
    with tempfile.TemporaryDirectory(prefix="ebc-bench-") as tmp:
        k = asyncio.run(kill9_run(Path(tmp), args.kill_after))
    print(f"kill -9 of a writer after {args.kill_after:g} s: {k['confirmed']} events confirmed, "
          f"{k['survived']} in the outbox after the kill ({k['lost']} lost; {k['stored']} rows stored), "
          f"{k['delivered']} delivered to the subscriber by a fresh reporter")


if __name__ == "__main__":
    main()
