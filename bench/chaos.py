"""Chaos soak (issue 11): broadcasts of every class on the demo township while random faults come
and go, then the invariants that must hold whatever happened.

For ``--minutes`` the bench submits a broadcast every 10–30 s (``--every``): emergencies of
severity 1–4 (some from a higher source level, so they pre-empt), drills and daily notices, with
``repeat`` 1–2, to everyone, a village's area code, a few devices or a speaker zone; some are
cancelled while waiting or while playing, some expire soon. Meanwhile it injects the faults of
bench/fault_matrix.py, each for a random time and then cleared, at most ``--max-faults`` at once:
10 % CRC errors on some RS-485 terminals, one or two dead terminals, the RS-485 adapter pulled for
1–5 s (half of the time as a program ends with nothing waiting, when the releaser owns its
devices), slow replies, mains failure on a few terminals, ``kill -9`` of the daemon (restarted
after 1–5 s), the MQTT broker down for 10–60 s. The whole plan is drawn up front from one seeded
RNG (``--seed``, printed), so a run can be repeated; only what the township does with it varies.

Afterwards every fault is cleared, the queue drains and the township settles (``--settle``); then

1. every broadcast record is final (succeeded / failed / cancelled);
2. every terminal is at rest (amplifier, override, zones off), the FM carrier off, the daemon's
   journal of activations empty and no ``release_pending`` fault on ``/devices``;
3. every outcome agrees with the simulator's audible evidence (``Township.judge`` given the
   broadcast's own recordings of the audio line; a broadcast whose window holds more than 0.2 s of
   another's sound is skipped and counted). A terminal reported unreachable or failed while the
   bench had it dead is excused when it was heard anyway: a horn left on by an earlier broadcast
   plays whatever is on the line, which a gateway that gets no answer cannot know;
4. the county has every MQTT ``seq`` (events, broadcasts, health), gaps allowed only for health
   snapshots the outbox dropped (counted in the health payload), and every final state;
5. the API answered no 5xx.

It prints, besides, broadcasts by final state, outcomes by kind, faults by kind, the time from a
replug of the RS-485 line until the terminals left on are at rest again (those no broadcast still
needs: not held by one whose program has yet to end, not taken by a new one), daemon restart
times, and the run's duration; ``--json`` adds the plan, the faults as applied and every
broadcast the bench submitted. Exit status 1 when an invariant fails. Keep ``--workdir`` to read
``daemon.log`` and the journal afterwards.

Run: .venv/bin/python bench/chaos.py --minutes 5 [--seed N] [--json FILE] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import itertools
import json
import os
import random
import re
import statistics
import sys
import threading
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx2
from fault_matrix import LINE, mqtt_seqs
from township import FINAL, RTU, TERMINALS, Township, sound_intervals, wait_until

FAULT_BAG = ("crc10", "dead", "unplug", "unplug", "slow", "mains", "kill9", "broker")
"""Faults are drawn from a shuffled bag, so a short run sees every kind; the unplug comes twice."""
FAULT_S = {"crc10": (20, 60), "dead": (20, 60), "unplug": (1, 5), "slow": (15, 45), "mains": (20, 60),
           "kill9": (1, 5), "broker": (10, 60)}
"""How long each fault lasts (for kill9: how long the daemon stays dead)."""
KILL9_RESTART_S = 20.0
"""What the plan reserves for a restart after kill -9 (so no other fault is planned beyond the max)."""
DEVICE_FAULTS = {"crc10": "crc_errors", "dead": "offline", "slow": "slow_replies", "mains": "mains_failure"}
"""The faults that are one simulator fault per chosen terminal, by their name in the simulator."""
FAULT_GAP_S = (4.0, 20.0)
FOREIGN_SOUND_S = 0.2
"""Another broadcast's sound in a window beyond this makes judging it unfair (a pre-emption's
hand-over overlaps by about 0.1 s)."""
RESTORE_GUARD_S = 60.0
AIM_GUARD_S = 60.0
TASK_GUARD_S = 150.0
"""Only guards against a hung bench, never performance claims."""

TEXTS = {
    "emergency": ["刘桥镇应急广播：沱河水位快速上涨，沿河群众请立即向高处转移。",
                  "紧急通知：县气象台发布暴雨预警，低洼地带群众请做好转移准备。",
                  "刘桥镇防汛指挥部通知：圩堤出现险情，周圩村群众请听从指挥撤离。"],
    "drill": ["这是刘桥镇应急广播系统演练，请勿惊慌。", "应急疏散演练开始，请按指定路线到达安置点。"],
    "daily": ["森林防火提示：严禁野外用火，严禁焚烧秸秆。", "村委会通知：明天上午九点在村部办理医保缴费。"],
}


# -- the plan -----------------------------------------------------------------------------------------


@dataclass
class BroadcastPlan:
    at: float
    """Seconds after the start of the chaos."""
    body: dict[str, Any]
    expires_in: float | None
    """``expires_at`` this long after the POST."""
    cancel: str | None
    """``waiting``: cancel ``cancel_after`` s after the POST (whatever it is doing then);
    ``playing``: cancel ``cancel_after`` s after it was first seen playing."""
    cancel_after: float = 0.0


@dataclass
class FaultPlan:
    at: float
    kind: str
    seconds: float
    devices: list[str] = field(default_factory=list)
    delay_ms: int | None = None
    at_release: bool = False
    """unplug: pulled as the next program ends (within ``AIM_GUARD_S``), when the devices are being
    released, rather than at once: the releaser then owns them at the replug."""


def plan_broadcasts(rng: random.Random, seconds: float, every: tuple[float, float],
                    villages: list[str]) -> list[BroadcastPlan]:
    """A broadcast every ``every`` s: classes, severities, source levels, targets, expiries, cancels."""
    out = []
    t = rng.uniform(2.0, 5.0)
    while t < seconds:
        r = rng.random()
        if r < 0.4:
            cls, severity = "emergency", rng.randint(1, 4)
            level = rng.choices([1, 2, 3, 4, 5], weights=[1, 5, 3, 2, 1])[0]
        elif r < 0.65:
            cls, severity, level = "drill", None, rng.choices([2, 3], weights=[3, 1])[0]
        else:
            cls, severity, level = "daily", None, rng.choice([1, 2])
        body: dict[str, Any] = {"class": cls, "source_level": level, "title": f"chaos #{len(out) + 1} {cls}",
                                "text": rng.choice(TEXTS[cls]),
                                "repeat": rng.choices([1, 2], weights=[7, 3])[0],
                                "targets": _targets(rng, villages)}
        if severity is not None:
            body["severity"] = severity
        expires = rng.uniform(5.0, 40.0) if rng.random() < 0.15 else None
        c = rng.random()
        cancel, after = (("waiting", rng.uniform(0.5, 6.0)) if c < 0.12 else
                         ("playing", rng.uniform(1.0, 10.0)) if c < 0.24 else (None, 0.0))
        out.append(BroadcastPlan(round(t, 2), body, expires and round(expires, 1), cancel, round(after, 2)))
        t += rng.uniform(*every)
    return out


def _targets(rng: random.Random, villages: list[str]) -> dict[str, Any]:
    r = rng.random()
    if r < 0.35:
        return {"all": True}
    if r < 0.6:
        return {"area_codes": sorted(rng.sample(villages, rng.randint(1, 2)))}
    if r < 0.85:
        devices = rng.sample(TERMINALS, rng.randint(2, 6)) + (["fm1"] if rng.random() < 0.15 else [])
        return {"devices": sorted(devices)}
    return {"zones": rng.choice([[1], [2], [1, 2]])}


def plan_faults(rng: random.Random, seconds: float, max_faults: int) -> list[FaultPlan]:
    """Faults from a shuffled bag, never two of a kind at once and at most ``max_faults`` together."""
    out: list[FaultPlan] = []
    bag: list[str] = []
    busy: list[tuple[float, str]] = []  # (planned end, kind)
    t = rng.uniform(5.0, 12.0)
    while t < seconds - 5.0:
        busy = [(end, k) for end, k in busy if end > t]
        if not bag:
            bag = list(FAULT_BAG)
            rng.shuffle(bag)
        kind = next((k for k in bag if k not in {b for _, b in busy}), None)
        if kind is None or len(busy) >= max_faults:
            t = min(end for end, _ in busy) + 0.5
            continue
        bag.remove(kind)
        lo, hi = FAULT_S[kind]
        f = FaultPlan(round(t, 2), kind, round(rng.uniform(lo, hi), 1))
        if kind in ("crc10", "slow"):
            f.devices = sorted(rng.sample(RTU, rng.randint(3, 8)))
        elif kind == "dead":
            f.devices = sorted(rng.sample(TERMINALS, rng.randint(1, 2)))
        elif kind == "mains":
            f.devices = sorted(rng.sample(TERMINALS, rng.randint(1, 3)))
        if kind == "slow":
            f.delay_ms = rng.randint(50, 200)
        if kind == "unplug":
            f.at_release = rng.random() < 0.5
        out.append(f)
        extra = KILL9_RESTART_S if kind == "kill9" else AIM_GUARD_S if f.at_release else 0.0
        busy.append((t + f.seconds + extra, kind))
        t += rng.uniform(*FAULT_GAP_S)
    return out


# -- running it ---------------------------------------------------------------------------------------


@dataclass
class FaultRun:
    """One fault as it was applied (wall-clock times)."""

    kind: str
    devices: list[str]
    applied: float
    planned_s: float
    cleared: float | None = None
    note: str = ""


class Chaos:
    """Runs a plan against a township: a scheduler thread hands each due action to a small pool,
    so a slow one (a cancel that waits for the release, a daemon restart) never holds up the rest."""

    def __init__(self, town: Township, args: argparse.Namespace) -> None:
        self.town, self.args = town, args
        self.lock = threading.Lock()
        self._agenda: list[tuple[float, int, str, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="chaos")
        self.futures: list[Future[None]] = []
        self.stopping = threading.Event()
        self.daemon_down = threading.Event()
        self.line_out = threading.Event()
        """The RS-485 adapter is pulled."""
        self.t0 = time.monotonic()
        self.submitted: dict[str, dict[str, Any]] = {}
        self.counts: Counter[str] = Counter()
        self.bench_errors: list[str] = []
        self.product_notes: list[str] = []
        self.faults: list[FaultRun] = []
        self.active: dict[str, FaultRun] = {}
        self.restores: list[float] = []
        self.restore_skipped: Counter[str] = Counter()
        self.restart_s: list[float] = []

    # ------------------------------------------------------------------ bookkeeping

    def count(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.counts[what] += n

    def error(self, text: str) -> None:
        with self.lock:
            self.bench_errors.append(f"{time.monotonic() - self.t0:7.1f}s {text}")

    def at(self, when: float, name: str, fn: Callable[[], None]) -> None:
        """Run ``fn`` at ``when`` (monotonic), unless the chaos is over by then."""
        if self.stopping.is_set():
            return
        with self.lock:
            self._agenda.append((when, next(self._seq), name, fn))
            self._agenda.sort(key=lambda x: (x[0], x[1]))

    def later(self, delay: float, name: str, fn: Callable[[], None]) -> None:
        self.at(time.monotonic() + delay, name, fn)

    def _guarded(self, name: str, fn: Callable[[], None]) -> None:
        """A failing action is a bench error, counted and shown, never the end of the run."""
        try:
            fn()
        except Exception as exc:
            self.error(f"{name}: {type(exc).__name__}: {exc}")
            traceback.print_exc()

    def run(self, broadcasts: list[BroadcastPlan], faults: list[FaultPlan], seconds: float) -> None:
        self.t0 = time.monotonic()
        for i, b in enumerate(broadcasts):
            self.at(self.t0 + b.at, f"broadcast {i + 1}", lambda i=i, b=b: self.submit(i, b))
        for f in faults:
            self.at(self.t0 + f.at, f"fault {f.kind}", lambda f=f: self.apply(f))
        end = self.t0 + seconds
        last_line = 0.0
        while time.monotonic() < end:
            self._watch_daemon()
            now = time.monotonic()
            with self.lock:
                due = [x for x in self._agenda if x[0] <= now]
                self._agenda = [x for x in self._agenda if x[0] > now]
            for _, _, name, fn in due:
                self.futures.append(self.pool.submit(self._guarded, name, fn))
            if now - last_line >= 30:
                last_line = now
                print(f"  {now - self.t0:6.0f} s: {len(self.submitted)} broadcasts submitted, faults on: "
                      f"{', '.join(sorted(self.active)) or 'none'}", flush=True)
            time.sleep(0.05)
        self.stopping.set()
        with self.lock:
            self._agenda.clear()
        _, pending = wait_futures(self.futures, timeout=TASK_GUARD_S)
        if pending:
            self.error(f"{len(pending)} actions still running {TASK_GUARD_S:.0f} s after the end")

    def _watch_daemon(self) -> None:
        """A daemon that exits when the bench did not kill it is a finding; it is restarted."""
        proc = self.town.daemon.proc
        if self.daemon_down.is_set() or proc is None or proc.poll() is None:
            return
        self.daemon_down.set()
        self.product_notes.append(f"daemon exited by itself with status {proc.returncode} at "
                                  f"{time.monotonic() - self.t0:.1f} s (see daemon.log)")
        self.futures.append(self.pool.submit(self._guarded, "restart", self.restart))

    # ------------------------------------------------------------------ broadcasts

    def submit(self, i: int, plan: BroadcastPlan) -> None:
        body = dict(plan.body)
        if plan.expires_in is not None:
            body["expires_at"] = (datetime.now(UTC) + timedelta(seconds=plan.expires_in)).isoformat()
        try:
            waiting = self.town.api("GET", "/broadcasts", params={"state": "waiting", "limit": 50})
            if waiting.status_code == 200 and len(waiting.json()) >= self.args.max_waiting:
                self.count("submit skipped: queue full")
                return
            response = self.town.api("POST", "/broadcasts", json=body)
        except httpx2.HTTPError as exc:
            self.count("submit refused: daemon down" if self.daemon_down.is_set() else "submit failed")
            if not self.daemon_down.is_set():
                self.error(f"POST /broadcasts: {exc!r}")
            return
        if response.status_code != 202:
            self.count(f"submit answered {response.status_code}")
            self.error(f"POST /broadcasts → {response.status_code} {response.text[:200]}")
            return
        bid = str(response.json()["id"])
        self.count("submitted")
        with self.lock:
            self.submitted[bid] = {"n": i + 1, "at": round(time.monotonic() - self.t0, 1), "body": body,
                                   "cancel": plan.cancel}
        if plan.cancel == "waiting":
            self.later(plan.cancel_after, f"cancel {bid}", lambda: self.cancel(bid, "waiting"))
        elif plan.cancel == "playing":
            deadline = time.monotonic() + 240.0
            self.later(0.5, f"watch {bid}", lambda: self.watch_playing(bid, plan.cancel_after, deadline))

    def state_of(self, bid: str) -> str | None:
        with contextlib.suppress(httpx2.HTTPError, ValueError, KeyError):
            response = self.town.api("GET", f"/broadcasts/{bid}")
            if response.status_code == 200:
                return str(response.json()["state"])
        return None

    def watch_playing(self, bid: str, after: float, deadline: float) -> None:
        state = self.state_of(bid)
        if state == "playing":
            self.later(after, f"cancel {bid}", lambda: self.cancel(bid, "playing"))
        elif state in FINAL:
            self.count("cancel while playing: it ended before it played")
        elif time.monotonic() < deadline:
            self.later(0.5, f"watch {bid}", lambda: self.watch_playing(bid, after, deadline))
        else:
            self.count("cancel while playing: never seen playing")

    def cancel(self, bid: str, intent: str) -> None:
        before = self.state_of(bid)
        try:
            response = self.town.api("POST", f"/broadcasts/{bid}/cancel")
        except httpx2.HTTPError:
            self.count("cancel failed: daemon down")
            return
        self.count(f"cancel ({intent} planned): was {before}, answered {response.status_code}")
        with self.lock:
            self.submitted[bid]["cancelled"] = {"state_before": before, "status": response.status_code}

    # ------------------------------------------------------------------ faults

    def apply(self, plan: FaultPlan) -> None:
        kind = plan.kind
        with self.lock:
            if kind in self.active or (kind == "kill9" and self.daemon_down.is_set()):
                self.counts[f"fault skipped (still busy): {kind}"] += 1
                return
            run = self.active[kind] = FaultRun(kind, plan.devices, time.time(), plan.seconds)
            self.faults.append(run)
        town = self.town
        if kind in DEVICE_FAULTS:
            name, args = DEVICE_FAULTS[kind], {"rate": 0.1} if kind == "crc10" else {}
            if kind == "slow":
                run.note, args = f"{plan.delay_ms} ms", {"delay_ms": plan.delay_ms}
            for dev in plan.devices:
                town.fault(name, device=dev, **args)
        elif kind == "unplug":
            aimed = plan.at_release and self.program_end()
            if self.stopping.is_set():
                with self.lock:
                    self.active.pop(kind, None)
                    self.faults.remove(run)
                return
            run.applied = time.time()
            run.note = ("at a program's end" if aimed else
                        "no program ended in time" if plan.at_release else "")
            town.fault("unplug", line=LINE)
            self.line_out.set()
        elif kind == "kill9":
            self.daemon_down.set()
            town.kill_daemon()
        elif kind == "broker":
            assert town.broker is not None
            town.broker.stop()
        self.count(f"fault {kind}")
        self.later(plan.seconds, f"clear {kind}", lambda: self.clear(run))

    def clear(self, run: FaultRun) -> None:
        """Undo one fault; also at the end of the chaos, whatever its planned time."""
        town, kind = self.town, run.kind
        if kind in DEVICE_FAULTS:
            for dev in run.devices:
                town.fault(DEVICE_FAULTS[kind], device=dev, clear=True)
        elif kind == "unplug":
            town.fault("unplug", line=LINE, clear=True)
            self.line_out.clear()
        elif kind == "kill9":
            self.restart()
        elif kind == "broker":
            assert town.broker is not None
            town.broker.start()
        run.cleared = time.time()
        with self.lock:
            self.active.pop(kind, None)
        if kind == "unplug" and not self.stopping.is_set():
            self.watch_restore(run.cleared, time.monotonic())

    def restart(self) -> None:
        """Start the daemon again and wait for its API; a start that fails is retried (and noted)."""
        for attempt in range(3):
            started = time.monotonic()
            try:
                self.town.restart_daemon()
            except RuntimeError as exc:
                self.product_notes.append(f"daemon restart {attempt + 1} failed: {str(exc)[-300:]}")
                time.sleep(5.0)
                continue
            self.restart_s.append(round(time.monotonic() - started, 2))
            self.daemon_down.clear()
            return
        raise RuntimeError("the daemon did not come back after 3 starts")

    def program_end(self) -> bool:
        """Wait until a program on the audio line ends (True), or the guard passes (False). For the
        first half of the guard only an end with no broadcast waiting counts (one waiting would take
        the devices over at once, and the releaser would have nothing to restore)."""
        started = time.monotonic()
        seen_on = False
        while time.monotonic() < started + AIM_GUARD_S and not self.stopping.is_set():
            on = self.town.sim("audio")["connections"] > 0
            if seen_on and not on and not self.daemon_down.is_set():
                if time.monotonic() > started + AIM_GUARD_S / 2:
                    return True
                with contextlib.suppress(httpx2.HTTPError, ValueError):
                    if self.town.api("GET", "/broadcasts", params={"state": "waiting"}).json() == []:
                        return True
            seen_on = on
            time.sleep(0.05)
        return False

    def dead_now(self) -> set[str]:
        with self.lock:
            run = self.active.get("dead")
            return set(run.devices) if run else set()

    def held(self) -> dict[str, float] | None:
        """Device → start of the playing broadcast that holds it; None while the daemon does not answer."""
        try:
            playing = self.town.api("GET", "/broadcasts", params={"state": "playing"})
            if playing.status_code != 200:
                return None
            out: dict[str, float] = {}
            for b in playing.json():
                record = self.town.api("GET", f"/broadcasts/{b['id']}").json()
                out |= dict.fromkeys((o["device_id"] for o in record.get("outcomes", [])),
                                     record["started_at"] or 0.0)
            return out
        except (httpx2.HTTPError, ValueError, KeyError):
            return None

    def watch_restore(self, replug: float, replug_mono: float) -> None:
        """After a replug: seconds until the RS-485 terminals left on are at rest again — the
        releaser's retries, woken by the line coming back (or the end of a broadcast's last read
        pass, when the line was pulled as its program ended). Left out: terminals of a broadcast
        whose program has not ended at the replug, terminals a broadcast started after the replug
        takes, dead ones. One sample per replug (the last terminal restored), if any remain."""
        held = self.held()
        if held is None:
            self.restore_skipped["daemon down"] += 1
            return
        left_on = {d for d in RTU if not self.town.at_rest(d)} - self.dead_now()
        recordings = self.town.sim("audio")["recordings"]
        over = {started for started in set(held.values())  # its program has been on the line and ended
                if any(r["started"] >= started and r["ended"] is not None for r in recordings)}
        on = {d for d in left_on if d not in held or held[d] in over}
        if not on:
            self.restore_skipped["held by a broadcast before or in its program" if left_on
                                 else "nothing left on"] += 1
            return
        rested: dict[str, float] = {}
        while on - rested.keys() and time.monotonic() < replug_mono + RESTORE_GUARD_S:
            if self.stopping.is_set() or self.line_out.is_set() or self.daemon_down.is_set():
                self.restore_skipped["interrupted by another fault"] += 1
                return
            for dev in sorted(on - rested.keys()):
                if self.town.at_rest(dev):
                    rested[dev] = time.monotonic() - replug_mono
            taken = {d for d, started in (self.held() or {}).items() if started > replug}
            on -= taken | self.dead_now()
            time.sleep(0.2)  # each round reads up to 16 terminals' state from the simulator
        if not on:
            self.restore_skipped["taken by a new broadcast or dead"] += 1
        elif on - rested.keys():
            self.restore_skipped[f"not restored within {RESTORE_GUARD_S:.0f} s"] += 1
            self.product_notes.append(f"replug at {replug:.1f}: {sorted(on - rested.keys())} still on after "
                                      f"{RESTORE_GUARD_S:.0f} s though no broadcast held them")
        else:
            self.restores.append(round(max(rested[d] for d in on), 2))

    def clear_all(self) -> None:
        """The end of the chaos: every fault still on is cleared, the daemon and broker are up."""
        for run in list(self.active.values()):
            try:
                self.clear(run)
            except Exception as exc:
                self.error(f"clearing {run.kind}: {exc!r}")
        proc = self.town.daemon.proc
        if proc is None or proc.poll() is not None:
            self.restart()
        if self.town.broker is not None and not self.town.broker.running:
            self.town.broker.start()

    def dead_spans(self) -> dict[str, list[tuple[float, float]]]:
        spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for run in self.faults:
            if run.kind == "dead":
                for dev in run.devices:
                    spans[dev].append((run.applied, run.cleared or time.time()))
        return spans


# -- after the chaos ----------------------------------------------------------------------------------


def all_broadcasts(town: Township) -> list[dict[str, Any]]:
    """Every broadcast the daemon has (its list, not the bench's: a POST the kill cut short may
    have been journalled all the same)."""
    out: list[dict[str, Any]] = []
    while True:
        response = town.api("GET", "/broadcasts", params={"limit": 500, "offset": len(out)})
        response.raise_for_status()
        page = response.json()
        out += page
        if len(page) < 500:
            return out


def unfinished(town: Township) -> list[str] | None:
    with contextlib.suppress(httpx2.HTTPError):
        return [b["id"] for b in all_broadcasts(town) if b["state"] not in FINAL]
    return None


def not_at_rest(town: Township) -> list[str]:
    """Terminals with amplifier, override or a zone on, and the FM transmitter if its carrier is."""
    out = [d for d in TERMINALS if not town.at_rest(d)]
    if town.sim("state", device="fm1")["state"]["tx"]:
        out.append("fm1")
    return out


def release_pending(town: Township) -> list[str]:
    return sorted(d["id"] for d in town.devices()
                  if any(f.get("fault") == "release_pending" for f in d.get("faults", [])))


def outbox_depth(town: Township) -> float | None:
    with contextlib.suppress(httpx2.HTTPError):
        text = town.api("GET", "/metrics").text
        if m := re.search(r"^ebc_outbox_depth(?:\{[^}]*\})? (\S+)$", text, re.M):
            return float(m.group(1))
    return None



def settle(chaos: Chaos, settle_s: float) -> dict[str, Any]:
    """Let the queue drain, the releaser restore everything and the outbox empty (guards only)."""
    town = chaos.town
    notes: dict[str, Any] = {}
    started = time.monotonic()
    left = unfinished(town) or []
    guard = min(1200.0, settle_s + 60.0 * len(left))
    with contextlib.suppress(AssertionError):
        wait_until("every broadcast final", lambda: unfinished(town) == [], every=1.0, guard_s=guard)
    notes["drain_s"] = round(time.monotonic() - started, 1)
    started = time.monotonic()
    with contextlib.suppress(AssertionError):
        wait_until("the township at rest", lambda: not not_at_rest(town) and not town.journal()
                   and not release_pending(town), every=0.5, guard_s=settle_s)
    notes["rest_s"] = round(time.monotonic() - started, 1)
    started = time.monotonic()
    with contextlib.suppress(AssertionError):
        wait_until("the outbox empty", lambda: outbox_depth(town) == 0, every=1.0,
                   guard_s=max(settle_s, 120.0))
    time.sleep(3.0)  # the last PUBACKed reports reach the county's subscriber
    notes["outbox_s"] = round(time.monotonic() - started, 1)
    return notes


def owner_of(recording: dict[str, Any], records: list[dict[str, Any]]) -> str | None:
    """The broadcast whose (last) run a recording belongs to: the latest one started before it
    and not finished by then."""
    best: dict[str, Any] | None = None
    for b in records:
        s, e = b["started_at"], b["finished_at"]
        if s is not None and s <= recording["started"] <= (e or float("inf")) and (
                best is None or s > best["started_at"]):
            best = b
    return best["id"] if best else None


def judge_all(chaos: Chaos, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Invariant 3: each finished broadcast against the simulator's evidence, where that is fair."""
    town = chaos.town
    recordings = town.sim("audio")["recordings"]
    owners = {r["file"]: owner_of(r, records) for r in recordings}
    sound_cache: dict[str, list[tuple[float, float]]] = {}

    def sound(rec: dict[str, Any]) -> list[tuple[float, float]]:
        if rec["file"] not in sound_cache:
            sound_cache[rec["file"]] = sound_intervals(Path(rec["file"]), rec["started"])
        return sound_cache[rec["file"]]

    dead = chaos.dead_spans()
    judged, skipped, skipped_ids = [], Counter(), []
    contradictions, excused = [], []
    for b in records:
        record = town.record(b["id"])
        if not any(o["device_id"] in TERMINALS and o["outcome"] != "pending" for o in record["outcomes"]):
            skipped["no terminal outcome (never activated)"] += 1
            continue
        s = record["started_at"] or record["created_at"]
        e = record["finished_at"] or time.time()
        own = [r for r in recordings if owners[r["file"]] == record["id"]]
        foreign = sum(max(0.0, min(e + 0.5, y) - max(s, x)) for r in recordings
                      if owners[r["file"]] != record["id"] and r["started"] < e + 0.5
                      and (r["ended"] or time.time()) > s for x, y in sound(r))
        if foreign > FOREIGN_SOUND_S:
            skipped["another broadcast's sound in its window"] += 1
            skipped_ids.append({"broadcast": record["id"], "foreign_sound_s": round(foreign, 2)})
            continue
        j = town.judge(record, repeat=int(record["request"].get("repeat", 1)), recordings=own)
        judged.append(record["id"])
        for c in j.contradictions:
            entry = {"broadcast": record["id"], "state": record["state"], "device": c.device,
                     "outcome": c.outcome, "reason": c.reason, "contradiction": c.contradiction,
                     "audible_s": c.audible_s, "program_sound_s": j.program_sound_s}
            was_dead = any(a < e and b2 > s for a, b2 in dead.get(c.device, []))
            if c.outcome in ("unreachable", "failed") and was_dead:
                excused.append(entry)
            else:
                contradictions.append(entry)
    return {"judged": len(judged), "skipped": dict(skipped), "skipped_ids": skipped_ids,
            "contradictions": contradictions, "excused": excused}


def mqtt_check(town: Township, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Invariant 4: every seq at the county (gaps only for dropped health snapshots), every final state."""
    assert town.subscriber is not None
    seqs = mqtt_seqs(town)
    have = set(seqs)
    missing = [s for s in range(seqs[0], seqs[-1] + 1) if s not in have] if seqs else []
    gw = town.data["gateway"]["id"]
    dropped: dict[Any, int] = {}
    finals: set[str] = set()
    for m in town.subscriber.snapshot():
        if m.retain:
            continue
        with contextlib.suppress(ValueError, KeyError, TypeError):
            doc = m.json()
            if m.topic == f"ebc/{gw}/health":
                pid = (doc["data"].get("process") or {}).get("pid")
                dropped[pid] = max(dropped.get(pid, 0), int(doc["data"]["outbox"]["dropped_health"]))
            elif m.topic.startswith(f"ebc/{gw}/broadcasts/") and doc["kind"] == "broadcast.state" \
                    and doc["data"]["name"] in FINAL:
                finals.add(doc["data"]["id"])
    no_final = sorted(b["id"] for b in records if b["id"] not in finals)
    allowed = sum(dropped.values())
    return {"seqs": len(seqs), "missing": len(missing), "missing_seqs": missing[:50],
            "dropped_health": allowed, "final_state_missing": no_final,
            "ok": len(missing) <= allowed and not no_final}


def check(chaos: Chaos) -> dict[str, Any]:
    town = chaos.town
    records = all_broadcasts(town)
    lost = sorted(set(chaos.submitted) - {b["id"] for b in records})
    stuck = sorted(b["id"] for b in records if b["state"] not in FINAL)
    left_on = not_at_rest(town)
    journal = town.journal()
    pending = release_pending(town)
    judgement = judge_all(chaos, [b for b in records if b["state"] in FINAL])
    mqtt = mqtt_check(town, records)
    full = [town.record(b["id"]) for b in records]
    outcomes = Counter(o["outcome"] for r in full for o in r["outcomes"])
    pending_in_final = sorted(r["id"] for r in full if r["state"] in FINAL
                              and any(o["outcome"] == "pending" for o in r["outcomes"]))
    invariants = {
        "1 every broadcast final": {"ok": not (stuck or lost or pending_in_final), "count": len(stuck),
                                    "ids": stuck, "accepted_but_unknown": lost,
                                    "final_with_pending_outcomes": pending_in_final},
        "2 every terminal at rest, journal empty": {
            "ok": not left_on and not journal and not pending, "left_on": left_on,
            "journal": sorted({f"{r['broadcast_id']}:{r['device_id']}" for r in journal}),
            "release_pending": pending},
        "3 outcomes agree with the evidence": {
            "ok": not judgement["contradictions"], "count": len(judgement["contradictions"]),
            "judged": judgement["judged"], "skipped": judgement["skipped"],
            "skipped_ids": judgement["skipped_ids"],
            "contradictions": judgement["contradictions"], "excused": judgement["excused"]},
        "4 MQTT seq complete": mqtt,
        "5 no 5xx": {"ok": not town.server_errors, "count": len(town.server_errors),
                     "errors": town.server_errors[:20]},
    }
    faults = Counter(f.kind for f in chaos.faults)
    return {
        "invariants": invariants,
        "broadcasts": {"total": len(records), "submitted_by_bench": len(chaos.submitted),
                       "by_state": dict(Counter(b["state"] for b in records)),
                       "by_class": dict(Counter(b["class"] for b in records))},
        "outcomes": dict(outcomes),
        "final_with_pending_outcomes": pending_in_final,
        "faults": {"by_kind": dict(faults),
                   "seconds_by_kind": {k: round(sum((f.cleared or time.time()) - f.applied
                                                    for f in chaos.faults if f.kind == k), 1)
                                       for k in faults}},
        "replug_to_restored_s": {"samples": len(chaos.restores),
                                 "median": statistics.median(chaos.restores) if chaos.restores else None,
                                 "max": max(chaos.restores) if chaos.restores else None,
                                 "all": chaos.restores, "not_measured": dict(chaos.restore_skipped)},
        "daemon_restart_s": chaos.restart_s,
        "bench": dict(chaos.counts),
        "bench_errors": chaos.bench_errors,
        "product_notes": chaos.product_notes,
    }


def report(result: dict[str, Any]) -> bool:
    """Print the invariants and figures; True when every invariant holds."""
    print("\n== invariants ==")
    ok = True
    listed = ("contradictions", "excused", "skipped_ids")
    for name, inv in result["invariants"].items():
        ok &= bool(inv["ok"])
        detail = {k: v for k, v in inv.items() if k not in ("ok", *listed) and v not in ([], {}, None)}
        print(f"{'PASS' if inv['ok'] else 'FAIL'}  {name}: {json.dumps(detail, ensure_ascii=False)[:1000]}")
    judged = result["invariants"]["3 outcomes agree with the evidence"]
    excused = judged["excused"]
    for what, entries in (("CONTRADICTION", judged["contradictions"]), ("excused", excused)):
        for c in entries[:40]:
            print(f"  {what}: {c['broadcast']} ({c['state']}) {c['device']} {c['outcome']} "
                  f"«{c['reason'][:70]}»: {c['contradiction']}")
    for s in judged["skipped_ids"][:20]:
        print(f"  not judged: {s['broadcast']}, {s['foreign_sound_s']} s of another broadcast's sound")
    print("\n== figures ==")
    print(f"broadcasts: {result['broadcasts']['total']} ({result['broadcasts']['submitted_by_bench']} "
          f"accepted from the bench); by final state {result['broadcasts']['by_state']}; "
          f"by class {result['broadcasts']['by_class']}")
    print(f"outcomes: {result['outcomes']}")
    if result["final_with_pending_outcomes"]:
        print(f"final records with 'pending' outcomes: {result['final_with_pending_outcomes']}")
    print(f"faults: {result['faults']['by_kind']}; seconds on: {result['faults']['seconds_by_kind']}")
    contradictions = result["invariants"]["3 outcomes agree with the evidence"]["contradictions"]
    print(f"contradictions: {len(contradictions)} (excused, dead terminal heard anyway: {len(excused)})")
    r = result["replug_to_restored_s"]
    print(f"replug → terminals restored (no broadcast holding them): {r['samples']} samples, median "
          f"{r['median']} s, max {r['max']} s; not measured: {r['not_measured']}")
    print(f"daemon restarts after kill -9: {result['daemon_restart_s']} s")
    print(f"bench: {result['bench']}")
    for line in result["bench_errors"][:20]:
        print(f"bench error: {line}")
    for line in result["product_notes"]:
        print(f"NOTE: {line}")
    run = result["run"]
    print(f"run: {run['seconds']} s (chaos {run['chaos_s']} s, then {run['settle']}); seed {run['seed']}")
    return ok


def watchdog(seconds: float, town: Township) -> None:
    """The last guard: a run that overstays by far dumps its threads, stops the township, exits 3."""
    def fire() -> None:
        print(f"\nchaos: still running after {seconds:.0f} s; giving up", file=sys.stderr, flush=True)
        faulthandler.dump_traceback(all_threads=True)
        hard = threading.Timer(TASK_GUARD_S, os._exit, (3,))  # should closing hang too
        hard.daemon = True
        hard.start()
        with contextlib.suppress(Exception):
            town.close()
        os._exit(3)
    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="how long the chaos lasts")
    parser.add_argument("--seed", type=int, help="default: a fresh one (printed)")
    parser.add_argument("--every", type=float, nargs=2, default=(10.0, 30.0), metavar=("MIN", "MAX"),
                        help="seconds between two broadcasts (at 5–20 s the line is on air 97 %% of "
                             "the time and the queue always full)")
    parser.add_argument("--max-faults", type=int, default=3, help="faults on at the same time, at most")
    parser.add_argument("--max-waiting", type=int, default=4,
                        help="a planned broadcast is skipped while this many wait already")
    parser.add_argument("--settle", type=float, default=60.0, help="seconds for the township to come to rest")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--workdir", type=Path, help="keep configs, logs and recordings here")
    parser.add_argument("--verbose", action="store_true", help="the daemon logs at debug level")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    seconds = args.minutes * 60
    rng = random.Random(seed)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"chaos: seed {seed}, {args.minutes:g} min, a broadcast every {args.every[0]:g}–"
          f"{args.every[1]:g} s, at most {args.max_faults} faults at once", flush=True)
    started = time.monotonic()
    with Township(args.workdir, verbose=args.verbose) as town:
        watchdog(seconds + 1800 + 2 * args.settle, town)
        villages = sorted({d["area_code"] for d in town.data["devices"] if d["id"] in TERMINALS})
        broadcasts = plan_broadcasts(rng, seconds, tuple(args.every), villages)
        faults = plan_faults(rng, seconds, args.max_faults)
        print(f"plan: {len(broadcasts)} broadcasts, {len(faults)} faults "
              f"({dict(Counter(f.kind for f in faults))}); workdir {town.workdir}", flush=True)
        chaos = Chaos(town, args)
        chaos.run(broadcasts, faults, seconds)
        chaos_s = round(time.monotonic() - chaos.t0, 1)
        print(f"chaos over after {chaos_s} s; clearing every fault and settling", flush=True)
        chaos.clear_all()
        notes = settle(chaos, args.settle)
        result = check(chaos)
        result["run"] = {"seed": seed, "minutes": args.minutes,
                         "seconds": round(time.monotonic() - started, 1), "chaos_s": chaos_s,
                         "settle": notes, "workdir": str(town.workdir),
                         "daemon_log": str(town.daemon.log_path)}
        result["plan"] = {"broadcasts": [asdict(b) for b in broadcasts],
                          "faults": [asdict(f) for f in faults]}
        result["fault_log"] = [asdict(f) for f in chaos.faults]
        result["submitted"] = chaos.submitted
        ok = report(result)
        print(f"daemon log: {town.daemon.log_path}")
        chaos.pool.shutdown(wait=False, cancel_futures=True)
    if args.json:
        args.json.write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
    print("chaos: all invariants hold" if ok else "chaos: INVARIANT FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
