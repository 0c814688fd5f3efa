"""What the fleet's publish path costs: messages published and acknowledged per CPU-second.

    .venv/bin/python bench/fleet_publish_cpu.py [--gateways 1000] [--messages 30000] [--repo DIR]

Starts a Mosquitto on a free loopback port (tests/mqttkit.py) and the fleet (simulator/fleet.py) in
this process, waits for every gateway to connect, then drives on the fleet's loop the mix of
bench/county_scale.py's load window — 70 % health snapshots round-robin, 30 % a fault raised and
cleared at once (each with its events and retained device states) — until every report has its
PUBACK. Prints CPU seconds (every thread of this process; the broker is another process) per message
published, so two versions compare on a machine others share. ``--repo`` measures another checkout.
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gateways", type=int, default=1000)
    p.add_argument("--messages", type=int, default=30000, help="driven reports (health or fault)")
    p.add_argument("--repo", default=str(HERE), help="the checkout whose simulator/ is measured")
    opts = p.parse_args()
    sys.path.insert(0, opts.repo)
    sys.path.insert(0, str(HERE / "tests"))
    from mqttkit import Broker

    from simulator.fleet import Fleet

    broker = Broker(Path(tempfile.mkdtemp(prefix="ebc-fleet-cpu-")) / "mosquitto").start()
    fleet = Fleet("127.0.0.1", broker.port, gateways=opts.gateways, terminals=20, connect_rate=500.0).start()
    try:
        if not fleet.wait_connected(timeout=120):
            raise SystemExit("the fleet did not connect")
        gws = list(fleet.gateways.values())
        rng = random.Random(1)

        def burst(start: int, count: int) -> None:
            for i in range(start, start + count):
                gw = gws[i % len(gws)]
                if i % 10 < 7:
                    gw.emit("gateway.health", gw.health(), "health", droppable=True)
                else:
                    dev = rng.choice(list(gw.terminals))
                    gw.raise_fault(dev, "amp_fault")
                    gw.clear_faults(dev, "amp_fault")

        kinds = ("events", "health", "state", "broadcasts")
        s0, c0, w0 = fleet.publish_stats(), cpu(), time.perf_counter()
        for start in range(0, opts.messages, 100):
            fleet._call(lambda start=start: burst(start, 100))
        while not fleet._call(lambda: all(not g.pending and not g.inflight for g in gws)):
            time.sleep(0.05)
        c1, w1, s1 = cpu(), time.perf_counter(), fleet.publish_stats()
        msgs = sum(s1.get(k, 0) - s0.get(k, 0) for k in kinds)
        print(f"{msgs} messages published and acknowledged (reports and retained states), CPU "
              f"{c1 - c0:.2f} s, wall {w1 - w0:.1f} s → {msgs / (c1 - c0):,.0f} msgs per CPU-second")
    finally:
        fleet.stop()
        broker.stop()


if __name__ == "__main__":
    main()
