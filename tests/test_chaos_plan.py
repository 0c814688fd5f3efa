"""The chaos soak's plan (bench/chaos.py): one seed, one plan, and the plan keeps its own limits.

The soak itself runs processes for minutes and is run by hand; what can be checked cheaply is that
a printed seed really repeats a run's plan, and that the plan never asks for what the brief rules
out (two faults of a kind at once, more than ``max_faults`` together, requests the API refuses).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from controller.broadcast.model import BroadcastRequest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import chaos

VILLAGES = [f"340621105{200 + i:03d}" for i in range(1, 20)]


def _plans(seed: int, seconds: float = 1800.0, max_faults: int = 3) -> tuple[list[object], list[object]]:
    rng = random.Random(seed)
    return (chaos.plan_broadcasts(rng, seconds, (10.0, 30.0), VILLAGES),
            chaos.plan_faults(rng, seconds, max_faults))


def test_a_seed_repeats_the_plan() -> None:
    assert _plans(42) == _plans(42)
    assert _plans(42) != _plans(43)


def test_faults_stay_within_their_limits() -> None:
    for seed in range(20):
        _, faults = _plans(seed, max_faults=3)
        spans = []
        for f in faults:
            assert isinstance(f, chaos.FaultPlan)
            lo, hi = chaos.FAULT_S[f.kind]
            assert lo <= f.seconds <= hi
            extra = chaos.KILL9_RESTART_S if f.kind == "kill9" else chaos.AIM_GUARD_S if f.at_release else 0.0
            spans.append((f.at, f.at + f.seconds + extra, f.kind))
        for at, _, kind in spans:
            on = [k for a, b, k in spans if a <= at < b]
            assert len(on) <= 3
            assert on.count(kind) == 1
        assert {f.kind for f in faults} == set(chaos.FAULT_S)  # a long run sees every kind


def test_every_planned_broadcast_is_a_valid_request() -> None:
    broadcasts, _ = _plans(7)
    classes = set()
    for b in broadcasts:
        assert isinstance(b, chaos.BroadcastPlan)
        request = BroadcastRequest.model_validate(b.body)
        classes.add((request.broadcast_class.value, request.repeat))
    assert {c for c, _ in classes} == {"emergency", "drill", "daily"}
    assert {r for _, r in classes} == {1, 2}
