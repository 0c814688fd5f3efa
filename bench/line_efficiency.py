"""Line efficiency: full-status polling of N ebt-1 terminals on one simulated 9600-baud RS-485 line.

For each N it prints, from one run against the wire-faithful simulator (a separate process, ptys
paced at the baud rate):
  - the achieved full-status cycle time of the merged-read poller (drivers.line_poller),
  - the wire-time limit: frame bytes × bit times / baud + 3.5-character silences before every
    frame + the simulator's configured turnaround, for exactly the requests that cycle sends,
  - their ratio,
  - the same cycle with a naive poller (one request per value, as common gateways do) through the
    same arbiter, and the speed-up of the merged poller over it,
  - the silence the gateway left between a reply and its next request, as the simulator measured
    it on the line (median and least; the RTU minimum is 3.5 characters, 3.65 ms at 9600 baud),
    and how many requests came too early (strict framing leaves them unanswered: timeouts).

Run: .venv/bin/python bench/line_efficiency.py [--sizes 16 32] [--cycles 5] [--rtu-framing lenient]
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
from drivers.line_poller import LinePoller  # noqa: E402
from drivers.modbus_codec import ReadBlock, is_bit_table  # noqa: E402
from drivers.modbus_terminal import ModbusTerminal  # noqa: E402
from drivers.profile import ModbusTerminalProfile, load_profile  # noqa: E402

BAUD = 9600
TURNAROUND_MS = 3.0
CHAR_BITS = 10  # 8N1: start + 8 data + stop


def reply_bytes(block: ReadBlock) -> int:
    """RTU reply size: unit, function, byte count, data, CRC."""
    data = (block.count + 7) // 8 if is_bit_table(block.table) else 2 * block.count
    return 3 + data + 2


def wire_limit_s(blocks: list[ReadBlock], terminals: int) -> float:
    """Shortest possible time on the wire for ``blocks`` sent to each of ``terminals``."""
    char_s = CHAR_BITS / BAUD
    t35 = 3.5 * char_s
    per_terminal = sum((8 + reply_bytes(b)) * char_s + 2 * t35 + TURNAROUND_MS / 1000 for b in blocks)
    return per_terminal * terminals


def naive_blocks(profile: ModbusTerminalProfile) -> list[ReadBlock]:
    """One request per value: each coil, each register (a 32-bit value is one value)."""
    seen: dict[tuple[str, int], ReadBlock] = {}
    for point in profile.points.values():
        key = (point.table, point.address)
        if key not in seen:
            seen[key] = ReadBlock(point.table, point.address, point.width)
    return list(seen.values())


async def naive_cycle(arbiter: LineArbiter, units: list[int], blocks: list[ReadBlock]) -> float:
    started = time.monotonic()
    for unit in units:
        for block in blocks:
            await arbiter.read(unit, block)
    return time.monotonic() - started


async def measure(n: int, cycles: int, workdir: Path, framing: str) -> dict[str, float]:
    cfg = write_sim_config(workdir, rtu_terminals=n, tcp_terminals=0, fm=False, baudrate=BAUD,
                           turnaround_ms=TURNAROUND_MS, rtu_framing=framing)
    profile = load_profile(REPO / "config" / "profiles" / "ebt-1.yaml")
    assert isinstance(profile, ModbusTerminalProfile)
    profile = profile.model_copy(update={"settings_poll_every": 1})  # full status on every cycle
    with running_simulator(cfg) as sim:
        arbiter = LineArbiter(SerialLineSettings(port=str(cfg.rtu_link), baudrate=BAUD, timeout_s=0.3))
        await arbiter.start()
        try:
            terminals = [ModbusTerminal(dev, i + 1, profile, arbiter) for i, dev in enumerate(cfg.rtu_ids)]
            poller = LinePoller(terminals, lambda result: None)
            await poller.poll_cycle()  # warm-up: open the port, settle the simulator
            merged = []
            for _ in range(cycles):
                results = await poller.poll_cycle()
                assert all(r.snapshot.online for r in results), "a terminal failed during the benchmark"
                merged.append(poller.stats.last_cycle_s)
            line = sim.call("stats", line="rs485")["stats"]  # the merged cycles (and the warm-up)
            blocks = naive_blocks(profile)
            naive = [await naive_cycle(arbiter, [t.unit_id for t in terminals], blocks)
                     for _ in range(max(2, cycles // 2))]
            stats = arbiter.stats
        finally:
            await arbiter.close()
    plan = list(terminals[0].status_plan.blocks)
    limit = wire_limit_s(plan, n)
    achieved = statistics.median(merged)
    naive_s = statistics.median(naive)
    return {"n": n, "requests_per_terminal": len(plan), "naive_requests_per_terminal": len(blocks),
            "achieved_s": achieved, "limit_s": limit, "ratio": achieved / limit,
            "naive_s": naive_s, "naive_limit_s": wire_limit_s(blocks, n), "speedup": naive_s / achieved,
            "timeouts": stats.timeouts, "crc_errors": stats.crc_errors,
            "idle_median_ms": line["idle_after_reply_ms"]["median"],
            "idle_min_ms": line["idle_after_reply_ms"]["min"], "early": line["early_frames"]}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--rtu-framing", choices=["strict", "lenient"], default="strict",
                        help="the simulator's framing (strict: a request too soon after a reply "
                             "goes unanswered)")
    args = parser.parse_args()
    t35_ms = 3.5 * CHAR_BITS / BAUD * 1000
    print(f"line efficiency: ebt-1 full status, one RS-485 line at {BAUD} baud 8N1, "
          f"turnaround {TURNAROUND_MS} ms, {args.rtu_framing} RTU framing, median of {args.cycles} cycles; "
          f"idle = silence from a reply's end to the next request, on the line (minimum {t35_ms:.2f} ms)")
    print(f"{'N':>3} {'req/term':>8} {'cycle ms':>9} {'limit ms':>9} {'ratio':>6} "
          f"{'naive req':>9} {'naive ms':>9} {'naive limit':>11} {'speed-up':>8} {'timeouts':>8} {'crc':>4} "
          f"{'idle med ms':>11} {'idle min ms':>11} {'early':>5}")
    for n in args.sizes:
        with tempfile.TemporaryDirectory(prefix="ebc-bench-") as tmp:
            r = await measure(n, args.cycles, Path(tmp), args.rtu_framing)
        print(f"{r['n']:>3} {r['requests_per_terminal']:>8} {r['achieved_s'] * 1000:>9.0f} "
              f"{r['limit_s'] * 1000:>9.0f} {r['ratio']:>6.2f} {r['naive_requests_per_terminal']:>9} "
              f"{r['naive_s'] * 1000:>9.0f} {r['naive_limit_s'] * 1000:>11.0f} {r['speedup']:>7.1f}x "
              f"{r['timeouts']:>8} {r['crc_errors']:>4} {r['idle_median_ms']:>11.2f} "
              f"{r['idle_min_ms']:>11.2f} {r['early']:>5}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
