"""Gaps in a gateway's ``seq``: found in the database, then explained (docs/mqtt.md).

The scan reads the stored seqs, not what this instance happened to receive, so it is right with
several county instances sharing the event stream (``$share``): each stores part of it, the
database holds all of it. With a share group a report must be ``settle_s`` old before a hole
before it counts, so another instance's slightly later write is not mistaken for a loss.

A gap is ``unexplained`` until a report accounts for it:

* ``overflow`` — an ``outbox.overflow`` event whose ``first_seq..last_seq`` contains it;
* ``health_drop`` — the next ``health`` report's ``outbox.dropped_health`` grew, since the one
  before the gap, by at least every seq missing between those two reports (the counter restarts
  with the gateway process, so a smaller value counts from zero);
* ``outbox_reset`` — a jump of more than a million to a seq that is the Unix time in ms of its own
  event: a new outbox file (docs/mqtt.md: a lost state directory starts at the current time), not
  lost reports.

Explanations can come after the gap is found (the health report follows it), so unexplained gaps
are looked at again on every scan of their gateway (and only then: the scanner remembers which
gateways have unexplained gaps and spares the others the query).
"""

from __future__ import annotations

import time
from typing import Any

from county.store import Store

RESET_JUMP = 1_000_000
RESET_CLOCK_SLACK_MS = 86_400_000


def _dropped_health(event: dict[str, Any] | None) -> int:
    if event is None:
        return 0
    data = event.get("data")
    outbox = data.get("outbox") if isinstance(data, dict) else None
    value = outbox.get("dropped_health") if isinstance(outbox, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


class GapScanner:
    """``scan(gateway)`` after new reports are stored; returns the gateway's gap counts if they changed."""

    def __init__(self, store: Store, settle_s: float = 0.0) -> None:
        self.store = store
        self.settle_s = settle_s
        self.scanned: dict[str, int] = store.scan_state()
        self.open: set[str] = store.gateways_with_unexplained_gaps()
        """Gateways that may have unexplained gaps (found here or in the database at start)."""

    def scan(self, gateway: str, now: float | None = None) -> bool:
        """Find new gaps and explain old ones; True if anything changed."""
        now = time.time() if now is None else now
        last = self.scanned.get(gateway)
        seqs = self.store.seqs_after(gateway, -1 if last is None else last, now - self.settle_s)
        changed = False
        prev = last
        for seq in seqs:
            if prev is not None and seq > prev + 1:
                changed |= self.store.add_gap(gateway, prev + 1, seq - 1, now)
                self.open.add(gateway)
            prev = seq
        if prev is not None and prev != last:
            self.store.set_scanned(gateway, prev)
            self.scanned[gateway] = prev
        return self.explain(gateway) or changed

    def explain(self, gateway: str) -> bool:
        if gateway not in self.open:
            return False
        open_gaps = self.store.gaps(gateway, unexplained_only=True)
        if not open_gaps:
            self.open.discard(gateway)
            return False
        changed = False
        overflows = [e["data"] for e in self.store.events_of_kind(gateway, "outbox.overflow")
                     if isinstance(e["data"], dict)]
        all_gaps = self.store.gaps(gateway)
        for gap in open_gaps:
            why = self._why(gateway, gap, overflows, all_gaps)
            if why is not None:
                self.store.explain_gap(gap["id"], why)
                changed = True
        return changed

    def _why(self, gateway: str, gap: dict[str, Any], overflows: list[dict[str, Any]],
             all_gaps: list[dict[str, Any]]) -> str | None:
        first, last = int(gap["first_missing"]), int(gap["last_missing"])
        for o in overflows:
            lo, hi = o.get("first_seq"), o.get("last_seq")
            if isinstance(lo, int) and isinstance(hi, int) and lo <= first and last <= hi:
                return "overflow"
        if last - first + 1 > RESET_JUMP:
            after = self.store.seqs_after(gateway, last, float("inf"))[:1]
            if after:
                event = self.store.event_at(gateway, after[0])
                ts = event.get("ts") if event else None
                if isinstance(ts, int | float) and abs(after[0] - ts * 1000) <= RESET_CLOCK_SLACK_MS:
                    return "outbox_reset"
        before, after_health = self.store.health_around(gateway, first, last)
        if after_health is None:
            return None
        now_dropped, was_dropped = _dropped_health(after_health), _dropped_health(before)
        grew = now_dropped - was_dropped if now_dropped >= was_dropped else now_dropped
        lo = before["seq"] if before else -1
        hi = after_health["seq"]
        missing = sum(int(g["last_missing"]) - int(g["first_missing"]) + 1 for g in all_gaps
                      if lo < int(g["first_missing"]) and int(g["last_missing"]) < hi
                      and g["explained_by"] in ("unexplained", "health_drop"))
        return "health_drop" if grew > 0 and grew >= missing else None
