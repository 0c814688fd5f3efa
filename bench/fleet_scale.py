"""How long N virtual gateways (simulator/fleet.py) take to connect, and what the fleet costs.

    .venv/bin/python bench/fleet_scale.py --gateways 1000 --terminals 20 --steady 30

Starts a Mosquitto on a free loopback port (tests/mqttkit.py), and ``mosquitto_sub`` in its own process
counting the retained births and device states, then the fleet in this process. Prints: time to every
CONNACK, time until the subscriber has every birth and every device state, the fleet's CPU seconds
for that ramp, and over a steady period (random faults, health snapshots) its CPU share and RSS.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from mqttkit import Broker  # noqa: E402

from simulator.fleet import Fleet  # noqa: E402

MOSQUITTO_SUB = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"


def rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def counter(port: int, topic: str, count: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([MOSQUITTO_SUB, "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", topic,
                             "-C", str(count)], stdout=subprocess.DEVNULL)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gateways", type=int, default=1000)
    p.add_argument("--terminals", type=int, default=20)
    p.add_argument("--connect-rate", type=float, default=200.0)
    p.add_argument("--fault-rate", type=float, default=0.5)
    p.add_argument("--health-interval", type=float, default=60.0)
    p.add_argument("--steady", type=float, default=30.0, help="seconds of steady running to measure")
    opts = p.parse_args()
    n, t = opts.gateways, opts.terminals
    with tempfile.TemporaryDirectory() as tmp:
        broker = Broker(Path(tmp) / "mosquitto").start()
        try:
            births = counter(broker.port, "ebc/+/birth", n)
            states = counter(broker.port, "ebc/+/devices/+/state", n * t)
            time.sleep(0.5)  # let both subscribe
            rss0 = rss_mb()
            fleet = Fleet("127.0.0.1", broker.port, gateways=n, terminals=t, seed=1,
                          fault_rate_per_hour=opts.fault_rate, health_interval_s=opts.health_interval,
                          connect_rate=opts.connect_rate)
            rss_built = rss_mb()
            cpu0, t0 = time.process_time(), time.monotonic()
            fleet.start()
            births.wait(600)
            t_births = time.monotonic() - t0
            states.wait(600)
            t_states = time.monotonic() - t0
            cpu_ramp = time.process_time() - cpu0
            print(f"{n} gateways x {t} terminals, connect rate {opts.connect_rate:g}/s")
            print(f"  every CONNACK after        {fleet.all_connected_s:.2f} s")
            print(f"  every birth received after {t_births:.2f} s")
            print(f"  every state received after {t_states:.2f} s  (fleet CPU for the ramp {cpu_ramp:.2f} s)")
            print(f"  RSS: interpreter {rss0:.0f} MB, fleet built {rss_built:.0f} MB, "
                  f"connected {rss_mb():.0f} MB")
            cpu1, t1 = time.process_time(), time.monotonic()
            s1 = fleet.publish_stats()
            time.sleep(opts.steady)
            s2 = fleet.publish_stats()
            cpu = (time.process_time() - cpu1) / (time.monotonic() - t1) * 100
            sent = {k: s2.get(k, 0) - s1.get(k, 0) for k in ("events", "health", "state", "random_faults")}
            print(f"  steady {opts.steady:g} s (faults {opts.fault_rate:g}/terminal/h, health every "
                  f"{opts.health_interval:g} s): fleet CPU {cpu:.1f} % of one core, RSS {rss_mb():.0f} MB, "
                  f"sent {sent}, connected {s2['connected']}/{n}")
            t2 = time.monotonic()
            fleet.stop()
            print(f"  graceful stop of all gateways: {time.monotonic() - t2:.2f} s")
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
