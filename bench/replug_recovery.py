"""Re-plug recovery: how soon health polling resumes after a serial line comes back.

The simulator removes the RS-485 pty (a USB adapter pulled out), keeps it away for a while, then
creates it again at the same path. The poller keeps running throughout; this prints, for each
trial, the time from re-plug to the first successful poll of every terminal on the line.

Run: .venv/bin/python bench/replug_recovery.py [--trials 3] [--outage 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the same simulator harness the tests use

from simkit import running_simulator, write_sim_config  # noqa: E402

from drivers.line_arbiter import LineArbiter, SerialLineSettings  # noqa: E402
from drivers.line_poller import LinePoller, PollResult, PollSettings  # noqa: E402
from drivers.modbus_terminal import ModbusTerminal  # noqa: E402
from drivers.profile import ModbusTerminalProfile, load_profile  # noqa: E402

TERMINALS = 4


async def trial(sim: object, line_id: str, last_ok: dict[str, float], outage_s: float) -> float:
    sim.fault("unplug", line=line_id)  # type: ignore[attr-defined]
    await asyncio.sleep(outage_s)
    sim.fault("unplug", line=line_id, clear=True)  # type: ignore[attr-defined]
    replugged = time.time()
    while min(last_ok.values()) < replugged:
        if time.time() - replugged > 60:
            raise RuntimeError("polling did not resume within 60 s")
        await asyncio.sleep(0.02)
    return max(last_ok.values()) - replugged


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--outage", type=float, default=3.0, help="seconds the line stays unplugged")
    args = parser.parse_args()
    profile = load_profile(REPO / "config" / "profiles" / "ebt-1.yaml")
    assert isinstance(profile, ModbusTerminalProfile)
    with tempfile.TemporaryDirectory(prefix="ebc-bench-") as tmp:
        cfg = write_sim_config(Path(tmp), rtu_terminals=TERMINALS, tcp_terminals=0, fm=False)
        with running_simulator(cfg) as sim:
            arbiter = LineArbiter(SerialLineSettings(port=str(cfg.rtu_link), timeout_s=0.3))
            last_ok = dict.fromkeys(cfg.rtu_ids, 0.0)

            def on_poll(result: PollResult) -> None:
                if result.snapshot.online:
                    last_ok[result.device_id] = result.snapshot.timestamp

            terminals = [ModbusTerminal(dev, i + 1, profile, arbiter) for i, dev in enumerate(cfg.rtu_ids)]
            poller = LinePoller(terminals, on_poll, PollSettings(interval_s=0.5))
            await arbiter.start()
            poller.start()
            try:
                while min(last_ok.values()) == 0.0:
                    await asyncio.sleep(0.05)
                print(f"re-plug recovery: {TERMINALS} terminals on one 9600-baud pty, poll interval 0.5 s, "
                      f"line unplugged for {args.outage:.1f} s per trial")
                times = []
                for i in range(args.trials):
                    took = await trial(sim, "rs485", last_ok, args.outage)
                    times.append(took)
                    print(f"trial {i + 1}: all polled again {took:.2f} s after re-plug", flush=True)
                print(f"median {statistics.median(times):.2f} s, worst {max(times):.2f} s "
                      f"(reconnects counted by the arbiter: {arbiter.stats.reconnects})")
            finally:
                await poller.stop()
                await arbiter.close()


if __name__ == "__main__":
    asyncio.run(main())
