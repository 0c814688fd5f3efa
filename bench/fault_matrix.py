"""Fault matrix: each simulated fault against a broadcast on the demo township, judged against the
simulator's own evidence.

For every fault it prints the broadcast's state and coverage, how many reported outcomes the
simulator's evidence contradicts (bench/township.py says when that is), per-terminal audible
seconds against one repetition of the program, the delay from the program's first sound to each
terminal's first audible moment (the attention tone), and whether every terminal was back at rest
afterwards. For line outages also: how soon after the replug the terminals on the line were
audible again (those that were not audible at the replug) and, after the broadcast ended, how soon
every terminal was restored.

Faults (``--only`` picks some): none, crc10 (10 % of replies CRC-corrupted on every RS-485
terminal, ``--trials`` drills), dead2 (two terminals dead; once health polling has them offline),
unplug-start / unplug-warmup / unplug-middle / unplug-release (the RS-485 adapter pulled for
``--outage`` s: 0.3 s after the POST — before the power-on frame —, 1 s after it — the amplifiers
warming up —, 8 s into the program, or as the program ends), slow (150 ms extra turnaround on
every RS-485 terminal), mains (three terminals on battery), kill9 (the daemon killed with SIGKILL
8 s into the program and started again), broker (Mosquitto down for ``--broker-outage`` s around a
broadcast; afterwards the county must have every report: the MQTT ``seq`` complete).

Run: .venv/bin/python bench/fault_matrix.py [--only crc10 unplug-start] [--trials 8] [--outage 3]
     [--broker-outage 60] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from township import RTU, TERMINALS, Judgement, Township, wait_until

TEXT = ("刘桥镇应急广播演练。县气象台发布暴雨预警，未来六小时降雨量将达到五十毫米以上。"
        "请低洼地带和河道沿岸的群众做好转移准备，听从村组干部指挥。这是一次演练。")
DRILL: dict[str, Any] = {"class": "drill", "targets": {"all": True}, "text": TEXT, "tone": "chime",
                         "title": "Fault matrix"}
LINE = "rs485-1"
NOTE_KEYS = ("rejoin_s_max", "restored_after_replug_s", "never_rejoined", "mqtt_seq_missing",
             "left_on_after_kill", "corrupted_replies")


@dataclass
class Result:
    fault: str
    trials: list[Judgement] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    unreachable_at_start: tuple[str, ...] = ()
    """Terminals the fault kept from being reached when the broadcast began: the attention-tone
    promise is for the others."""

    def summary(self) -> dict[str, Any]:
        audible = [t.audible_s for j in self.trials for t in j.terminals.values()]
        delays = [t.first_audible_delay_s for j in self.trials for t in j.terminals.values()
                  if t.first_audible_delay_s is not None and t.device not in self.unreachable_at_start]
        return {
            "fault": self.fault,
            "states": [j.state for j in self.trials],
            "coverage": [j.coverage for j in self.trials],
            "contradictions": sum(len(j.contradictions) for j in self.trials),
            "unconfirmed": sum(t.unconfirmed for j in self.trials for t in j.terminals.values()),
            "contradicted": [f"{c.device}: {c.contradiction}" for j in self.trials for c in j.contradictions],
            "outcomes": [_count(j) for j in self.trials],
            "repetition_sound_s": [j.repetition_sound_s for j in self.trials],
            "audible_s_min_median": [round(min(audible), 1), round(statistics.median(audible), 1)]
            if audible else None,
            "tone_delay_s_max": round(max(delays), 3) if delays else None,
            "tone_delay_over_100ms": sorted({t.device for j in self.trials for t in j.terminals.values()
                                             if (t.first_audible_delay_s or 0) > 0.1
                                             and t.device not in self.unreachable_at_start}),
            "released": all(t.released for j in self.trials for t in j.terminals.values()),
            "reasons": [j.reason[:300] for j in self.trials],
            **self.notes,
        }


def _count(j: Judgement) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in j.terminals.values():
        counts[t.outcome] = counts.get(t.outcome, 0) + 1
    return counts


def run_broadcast(town: Township, body: dict[str, Any] = DRILL,
                  during: Callable[[str], None] | None = None) -> Judgement:
    bid = town.broadcast(body)
    if during is not None:
        during(bid)
    record = town.wait_final(bid)
    settle(town)
    return town.judge(record, repeat=body.get("repeat", 1))


def settle(town: Township, guard_s: float = 60.0) -> None:
    """Until every terminal is at rest again (the releaser's work), so the next trial starts clean."""
    wait_until("every terminal at rest", lambda: all(town.at_rest(d) for d in TERMINALS), every=0.2,
               guard_s=guard_s)


def program_started(town: Township, bid: str) -> float:
    """Wall-clock moment the program's first chunk reached the simulator's audio line."""
    town.wait_playing(bid)
    since = time.time() - 60
    rec = wait_until("the program on the audio line", lambda: next(
        (r for r in town.sim("audio")["recordings"] if r["started"] > since and r["ended"] is None), None),
        every=0.02)
    return float(rec["started"])


def program_ended(town: Township) -> float:
    """Wait until the audio line closes (the player finished), return when."""
    wait_until("the program to end", lambda: town.sim("audio")["connections"] == 0, every=0.02)
    return time.time()


def outage(town: Township, seconds: float) -> float:
    """Pull the RS-485 adapter for ``seconds``; returns the wall-clock moment it was plugged back."""
    town.fault("unplug", line=LINE)
    time.sleep(seconds)
    town.fault("unplug", line=LINE, clear=True)
    return time.time()


def after_replug(town: Township, replug: float, audible_at_replug: set[str]) -> dict[str, Any]:
    """How soon the line's terminals were audible again after the replug."""
    rejoin = {}
    for dev in RTU:
        if dev in audible_at_replug:
            continue
        later = [a for a, b in town.audible_spans(dev) if a >= replug - 0.05]
        rejoin[dev] = round(later[0] - replug, 2) if later else None
    joined = [v for v in rejoin.values() if v is not None]
    return {"audible_at_replug": len(audible_at_replug), "rejoined": len(joined),
            "never_rejoined": sorted(d for d, v in rejoin.items() if v is None),
            "rejoin_s_max": max(joined) if joined else None,
            "rejoin_s_median": round(statistics.median(joined), 2) if joined else None}


def audible_now(town: Township) -> set[str]:
    return {d for d in RTU if town.sim("audible", device=d)["audible_now"]}


def restore_time(town: Township, replug: float) -> float:
    """Seconds from the replug until every RS-485 terminal is at rest."""
    wait_until("restored", lambda: all(town.at_rest(d) for d in RTU), every=0.05, guard_s=60)
    return round(time.time() - replug, 2)


# -- the faults ---------------------------------------------------------------------------------------


def f_none(town: Township, args: argparse.Namespace) -> Result:
    return Result("none", [run_broadcast(town)])


def f_crc10(town: Township, args: argparse.Namespace) -> Result:
    for dev in RTU:
        town.fault("crc_errors", device=dev, rate=0.1)
    try:
        trials = [run_broadcast(town) for _ in range(args.trials)]
        stats = town.sim("stats", line=LINE)["stats"]
    finally:
        for dev in RTU:
            town.fault("crc_errors", device=dev, clear=True)
    return Result("crc10", trials, {"corrupted_replies": stats["corrupted_replies"]})


def f_dead2(town: Township, args: argparse.Namespace) -> Result:
    dead = ["t05", "t12"]
    for dev in dead:
        town.fault("offline", device=dev)
    try:
        wait_until("health polling to have them offline", lambda: all(
            d["online"] is False for d in town.devices() if d["id"] in dead), guard_s=90)
        bid = town.broadcast(DRILL)
        record = town.wait_final(bid)
        trial = town.judge(record)
    finally:
        for dev in dead:
            town.fault("offline", device=dev, clear=True)
    settle(town)
    return Result("dead2", [trial], {"dead": dead}, tuple(dead))


def f_unplug(where: str) -> Callable[[Township, argparse.Namespace], Result]:
    def run(town: Township, args: argparse.Namespace) -> Result:
        notes: dict[str, Any] = {}

        def during(bid: str) -> None:
            if where == "start":
                time.sleep(0.3)  # before the power-on frame: they join after the replug, then warm up
            elif where == "warmup":
                time.sleep(1.0)  # after the power-on frame: they warm up while the line is out
            elif where == "middle":
                program_started(town, bid)
                time.sleep(8.0)
            else:
                program_started(town, bid)
                program_ended(town)
            before = audible_now(town)
            town.fault("unplug", line=LINE)
            time.sleep(args.outage)
            at_replug = audible_now(town)
            town.fault("unplug", line=LINE, clear=True)
            replug = time.time()
            notes["audible_during_outage"] = len(before & at_replug)
            if where == "release":
                notes["restored_after_replug_s"] = restore_time(town, replug)
            else:
                record = town.wait_final(bid)
                notes.update(after_replug(town, replug, at_replug))
                if record["finished_at"] and record["finished_at"] < replug:
                    notes["ended_before_replug"] = True
        return Result(f"unplug-{where}", [run_broadcast(town, during=during)], notes,
                      tuple(RTU) if where in ("start", "warmup") else ())
    return run


def f_slow(town: Township, args: argparse.Namespace) -> Result:
    for dev in RTU:
        town.fault("slow_replies", device=dev, delay_ms=150)
    try:
        trials = [run_broadcast(town)]
    finally:
        for dev in RTU:
            town.fault("slow_replies", device=dev, clear=True)
    return Result("slow", trials)


def f_mains(town: Township, args: argparse.Namespace) -> Result:
    devs = ["t03", "t09", "t17"]
    for dev in devs:
        town.fault("mains_failure", device=dev)
    try:
        trials = [run_broadcast(town)]
    finally:
        for dev in devs:
            town.fault("mains_failure", device=dev, clear=True)
    return Result("mains", trials, {"on_battery": devs})


def f_kill9(town: Township, args: argparse.Namespace) -> Result:
    notes: dict[str, Any] = {}

    def during(bid: str) -> None:
        program_started(town, bid)
        time.sleep(8.0)
        town.kill_daemon()
        notes["left_on_after_kill"] = sum(not town.at_rest(d) for d in TERMINALS)
        time.sleep(2.0)
        town.restart_daemon()
    result = Result("kill9", [run_broadcast(town, during=during)], notes)
    return result


def f_broker(town: Township, args: argparse.Namespace) -> Result:
    assert town.broker is not None and town.subscriber is not None
    gw = town.data["gateway"]["id"]
    town.broker.stop()
    stopped = time.time()
    bid = town.broadcast(DRILL)
    record = town.wait_final(bid)
    trial = town.judge(record)
    time.sleep(max(0.0, args.broker_outage - (time.time() - stopped)))
    town.broker.start()
    topic = f"ebc/{gw}/broadcasts/{bid}"
    town.subscriber.wait_for("the broadcast's final state at the county", lambda msgs: any(
        m.topic == topic and m.json()["kind"] == "broadcast.state" and m.json()["data"]["name"] in
        ("succeeded", "failed") for m in msgs))
    time.sleep(2.0)
    seqs = mqtt_seqs(town)
    missing = [s for s in range(seqs[0], seqs[-1] + 1) if s not in set(seqs)] if seqs else []
    county = [m.json() for m in town.subscriber.on(topic) if m.json()["kind"] == "broadcast.outcome"]
    return Result("broker", [trial], {"outage_s": round(time.time() - stopped, 1), "mqtt_seqs": len(seqs),
                                      "mqtt_seq_missing": len(missing),
                                      "county_outcomes": len({c["data"]["device"] for c in county}),
                                      "historical": sum(1 for m in town.subscriber.on(topic)
                                                        if m.json().get("historical"))})


def mqtt_seqs(town: Township) -> list[int]:
    """Every ``seq`` the county received on events, broadcasts/<id> and health (docs/mqtt.md)."""
    assert town.subscriber is not None
    prefix = f"ebc/{town.data['gateway']['id']}/"
    outbox_topics = ("/events", "/health")
    return sorted({m.json()["seq"] for m in town.subscriber.snapshot()
                   if m.topic.startswith(prefix) and not m.retain
                   and (m.topic.endswith(outbox_topics) or "/broadcasts/" in m.topic)})


FAULTS: dict[str, Callable[[Township, argparse.Namespace], Result]] = {
    "none": f_none, "crc10": f_crc10, "dead2": f_dead2, "unplug-start": f_unplug("start"),
    "unplug-warmup": f_unplug("warmup"),
    "unplug-middle": f_unplug("middle"), "unplug-release": f_unplug("release"), "slow": f_slow,
    "mains": f_mains, "kill9": f_kill9, "broker": f_broker,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(FAULTS), default=list(FAULTS))
    parser.add_argument("--trials", type=int, default=8, help="drills under 10 %% CRC errors")
    parser.add_argument("--outage", type=float, default=3.0, help="seconds the RS-485 adapter is out")
    parser.add_argument("--broker-outage", type=float, default=60.0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--verbose", action="store_true", help="the daemon logs at debug level")
    parser.add_argument("--workdir", type=Path, help="keep configs, logs and recordings here")
    args = parser.parse_args()
    results = []
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    with Township(args.workdir, verbose=args.verbose) as town:
        for name in args.only:
            started = time.time()
            result = FAULTS[name](town, args)
            summary = result.summary()
            summary["bench_s"] = round(time.time() - started, 1)
            results.append(summary)
            print(json.dumps(summary, ensure_ascii=False), flush=True)
        print(f"server errors (5xx): {len(town.server_errors)}", *town.server_errors[:5], sep="\n")
        print(f"daemon log: {town.daemon.log_path}")
    total = sum(r["contradictions"] for r in results)
    print(f"\n{'fault':16} {'states':28} {'coverage':24} contra  tone≤100ms  released  notes")
    for r in results:
        cov = ",".join(f"{c:.2f}" for c in r["coverage"] if c is not None)
        notes = {k: v for k, v in r.items() if k in NOTE_KEYS}
        late = r["tone_delay_over_100ms"]
        tone = "yes" if not late else "no: " + ",".join(late)[:10]
        print(f"{r['fault']:16} {','.join(r['states'])[:28]:28} {cov[:24]:24} {r['contradictions']:6} "
              f"{tone:11} {'yes' if r['released'] else 'NO':9} {json.dumps(notes, ensure_ascii=False)}")
    print(f"contradictions in all: {total}")
    if args.json:
        args.json.write_text(json.dumps(results, ensure_ascii=False, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
