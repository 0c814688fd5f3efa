"""Where the silence between a reply and the next request goes, on one simulated 9600-baud line.

Modbus RTU owes 3.5 characters of silence after every frame, replies included (3.65 ms at 9600
baud); anything more is time the line stands idle. This polls N ebt-1 terminals (full status,
through drivers.line_poller and the line arbiter, as bench/line_efficiency.py does) and prints:
  - the silence as the simulator measured it on the line (from a reply's last byte on the wire to
    the next request's first byte; median and least) and how many requests came too early;
  - the gateway's side of it, from timestamps taken by wrapping the arbiter's internals (nothing
    is changed): from the reply's end as the arbiter bounds it (drivers/line_arbiter.py
    ``_ReplyEnd``) to the next request's write; and, for held poll replies, how late the release
    timer fired, how long after the release the next request was ready and then written.
The rest of the silence (the simulator's figure minus the gateway's) is how late the reply's
bytes reached the gateway after their wire time, plus the simulator's own read of the request.

Run: .venv/bin/python bench/reply_silence.py [--terminals 16] [--cycles 4]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the same simulator harness the tests use

from simkit import running_simulator, write_sim_config  # noqa: E402

from drivers import line_arbiter  # noqa: E402
from drivers.line_arbiter import LineArbiter, SerialLineSettings  # noqa: E402
from drivers.line_poller import LinePoller  # noqa: E402
from drivers.modbus_terminal import ModbusTerminal  # noqa: E402
from drivers.profile import ModbusTerminalProfile, load_profile  # noqa: E402

BAUD = 9600
T35_MS = 3.5 * 10 / BAUD * 1000


class Probe:
    """Timestamps of one transaction after another, from wrappers around the arbiter's internals."""

    def __init__(self) -> None:
        self.current: dict[str, Any] = {}
        self.rows: list[dict[str, Any]] = []

    def install(self) -> None:
        reply_end, hold = line_arbiter._ReplyEnd, line_arbiter._ReplyHold
        new_reply, on_time, next_request = reply_end.new_reply, hold._release_on_time, hold.next_request
        probe = self

        def wrapped_new_reply(end: Any) -> None:  # the previous reply is final here
            if getattr(end, "complete_at", None) is not None:
                probe.current["end"] = end.end(end.complete_at)
            new_reply(end)

        def wrapped_on_time(h: Any) -> None:
            probe.current.update(due=h._due, fired=time.monotonic())
            on_time(h)

        def wrapped_next_request(h: Any, now: float) -> None:
            probe.current["ready"] = now
            next_request(h, now)

        reply_end.new_reply = wrapped_new_reply  # type: ignore[method-assign]
        hold._release_on_time = wrapped_on_time  # type: ignore[method-assign]
        hold.next_request = wrapped_next_request  # type: ignore[method-assign]

    def watch_writes(self, arbiter: LineArbiter) -> None:
        port = arbiter._client.ctx.transport.sync_serial  # type: ignore[union-attr]
        write = port.write

        def wrapped_write(data: bytes) -> Any:
            if "end" in self.current:
                self.rows.append({**self.current, "write": time.monotonic()})
            self.current = {}
            return write(data)

        port.write = wrapped_write


def summary(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return f"median {statistics.median(ms):5.2f}  least {min(ms):5.2f}  most {max(ms):6.2f} ms (n={len(ms)})"


async def measure(hold: bool, n: int, cycles: int, profile: ModbusTerminalProfile, probe: Probe) -> None:
    with tempfile.TemporaryDirectory(prefix="ebc-bench-") as tmp:
        cfg = write_sim_config(Path(tmp), rtu_terminals=n, tcp_terminals=0, fm=False, baudrate=BAUD)
        with running_simulator(cfg) as sim:
            arbiter = LineArbiter(SerialLineSettings(port=str(cfg.rtu_link), baudrate=BAUD, timeout_s=0.3,
                                                     hold_replies=hold))
            await arbiter.start()
            try:
                probe.watch_writes(arbiter)
                terminals = [ModbusTerminal(d, i + 1, profile, arbiter) for i, d in enumerate(cfg.rtu_ids)]
                poller = LinePoller(terminals, lambda result: None)
                await poller.poll_cycle()  # warm-up
                probe.rows.clear()
                for _ in range(cycles):
                    await poller.poll_cycle()
                line = sim.call("stats", line="rs485")["stats"]
                lead = arbiter._hold.lead() * 1000 if arbiter._hold is not None else 0.0
            finally:
                await arbiter.close()
    idle = line["idle_after_reply_ms"]
    print(f"\n{'held poll replies' if hold else 'replies taken as they come'} "
          f"({n} terminals, {cycles} cycles; minimum silence {T35_MS:.2f} ms)")
    print(f"  on the line (simulator):        median {idle['median']:5.2f}  least {idle['min']:5.2f} ms; "
          f"too early: {line['early_frames']}")
    rows = probe.rows
    print(f"  reply end (bound) -> write:     {summary([r['write'] - r['end'] for r in rows])}")
    fired = [r for r in rows if "fired" in r and "ready" in r]
    if fired:
        print(f"  release timer late:             {summary([r['fired'] - r['due'] for r in fired])}")
        print(f"  release due -> request ready:   {summary([r['ready'] - r['due'] for r in fired])}")
        print(f"  request ready -> written:       {summary([r['write'] - r['ready'] for r in fired])}")
        print(f"  lead (release this much before the silence ends): {lead:.2f} ms")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--terminals", type=int, default=16)
    parser.add_argument("--cycles", type=int, default=4)
    args = parser.parse_args()
    profile = load_profile(REPO / "config" / "profiles" / "ebt-1.yaml")
    assert isinstance(profile, ModbusTerminalProfile)
    profile = profile.model_copy(update={"settings_poll_every": 1})  # full status: 3 requests/terminal
    probe = Probe()
    probe.install()
    for hold in (True, False):
        await measure(hold, args.terminals, args.cycles, profile, probe)


if __name__ == "__main__":
    asyncio.run(main())
