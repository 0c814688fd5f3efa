"""County-wide broadcasts inside the service: the API's requests → signed commands → one live report.

The commands module (:mod:`county.commands`) is pure logic; this module gives it what the running
service knows — the inventory and online status from the picture, the MQTT connection to publish
on, every command answer and ``broadcasts/<id>`` report from the ingest, a clock that ticks —
and keeps the result: every county broadcast is written to the ``county_broadcasts`` table when it
is created and again whenever its report changes, audited with the operator's token name, and
streamed to the console as an SSE ``county_broadcast`` event.

Everything runs on the event loop (the ingest calls back there); the database is written from a
worker thread, once per tick, with the reports that changed since.

After a county restart the history is intact but tracking is best-effort: a broadcast that was
still in progress is served with the last report stored before the stop (``live: false``); the
service does not resend it, follow its answers or cancel it. The gateways keep playing what they
accepted, and their own reports still reach the per-gateway broadcast history.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from county.commands import (
    AREA_CODE,
    BroadcastRequestError,
    CommandTracker,
    CountyBroadcast,
    CountySigner,
)
from county.picture import Picture
from county.store import Store

log = logging.getLogger(__name__)

TICK_S = 0.5
RETIRE_DONE_S = 60.0
"""A finished broadcast stays live this long for late reports, then is served from the database."""
RETIRE_EXPIRED_S = 3600.0
"""An expired one that never finished (a gateway that accepted and never reported) is let go then."""
CANCEL_ATTEMPTS = 5
API_FIELDS = frozenset({"targets", "class", "severity", "title", "text", "tone", "repeat", "expires_at",
                        "confirm", "source", "language", "gap_s", "volume"})


class NoSigningKey(Exception):
    """The service has no ``signing`` key: it can watch the county but not command it."""


class RequestError(ValueError):
    """A request the API refuses; ``field`` names what is wrong (``targets.gateways.1``, ``confirm``…)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass
class _Cancel:
    """The signed ``cancel`` sent to one gateway that had accepted the broadcast."""

    broadcast_id: str
    correlation_ids: list[str] = field(default_factory=list)
    sent_at: float | None = None
    answer: dict[str, Any] | None = None

    def view(self) -> dict[str, Any]:
        return {"broadcast_id": self.broadcast_id, "attempts": len(self.correlation_ids),
                "sent_at": self.sent_at,
                "correlation_id": self.correlation_ids[-1] if self.correlation_ids else None,
                "answer": self.answer}


@dataclass
class _Live:
    bc: CountyBroadcast
    request: dict[str, Any]
    created_by: str
    cancelled_by: str | None = None
    cancels: dict[str, _Cancel] = field(default_factory=dict)
    last: str = ""
    done_at: float | None = None


def parse_request(body: Any, known_gateways: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any],
                                                                         list[str]]:
    """The API's body → (the request as shown in the report, the commands module's request, the field
    path of each of its targets). ``targets`` is ``{"gateways": [...], "area_codes": [...]}``."""
    if not isinstance(body, dict):
        raise RequestError("body", "must be a JSON object")
    if "alert" in body:
        raise RequestError("alert", "a CAP alert cannot be fanned out from the county API yet; "
                                    "send the warning as text")
    unknown = sorted(set(body) - API_FIELDS)
    if unknown:
        raise RequestError(unknown[0], "unknown field")
    if body.get("confirm") is not True:
        raise RequestError("confirm", "must be true: confirm the broadcast before it is sent")
    targets = body.get("targets")
    if not isinstance(targets, dict):
        raise RequestError("targets", 'must be an object: {"gateways": [...], "area_codes": [...]}')
    extra = sorted(set(targets) - {"gateways", "area_codes"})
    if extra:
        raise RequestError(f"targets.{extra[0]}", "unknown field (gateways or area_codes)")
    paths: dict[str, str] = {}
    for kind in ("gateways", "area_codes"):
        values = targets.get(kind)
        if values is None:
            continue
        if not isinstance(values, list):
            raise RequestError(f"targets.{kind}", "must be a list")
        for i, value in enumerate(values):
            path = f"targets.{kind}.{i}"
            if not isinstance(value, str) or not value:
                raise RequestError(path, "must be a non-empty string")
            if kind == "area_codes" and not AREA_CODE.match(value):
                raise RequestError(path, f"{value[:64]!r} is not a 12-digit area code")
            if kind == "gateways" and value not in known_gateways:
                raise RequestError(path, f"no gateway {value[:64]!r} is known to the county")
            paths.setdefault(value, path)
    if not paths:
        raise RequestError("targets", "name at least one gateway or area code")
    shown = {k: v for k, v in body.items() if k != "confirm"}
    request = {k: v for k, v in shown.items() if k != "targets"}
    request["targets"] = list(paths)
    return shown, request, list(paths.values())


class CountyBroadcasts:
    """See the module docstring. ``signer`` None: reading works, sending raises :class:`NoSigningKey`."""

    def __init__(self, store: Store, picture: Picture, publish: Callable[[str, bytes], Any], prefix: str,
                 signer: CountySigner | None, *, answer_timeout_s: float = 15.0, retry_after_s: float = 2.0,
                 tick_s: float = TICK_S, clock: Callable[[], float] = time.time) -> None:
        self.store, self.picture, self.signer = store, picture, signer
        self.tracker = CommandTracker(lambda topic, payload: publish(topic, payload), prefix)
        self.answer_timeout_s, self.retry_after_s, self.tick_s = answer_timeout_s, retry_after_s, tick_s
        self._clock = clock
        self.live: dict[str, _Live] = {}
        self._dirty: dict[str, dict[str, Any]] = {}

    def is_online(self, gateway: str) -> bool:
        view = self.picture.gateways.get(gateway)
        return view is not None and view.status == "online"

    def inventory(self) -> dict[str, list[dict[str, Any]]]:
        """Gateway id → its devices (id, area code, kind) from the births the picture holds."""
        return {gw.id: [{"id": d.id, "area_code": d.area_code, "kind": d.kind}
                        for d in gw.devices.values() if isinstance(d.area_code, str)]
                for gw in self.picture.gateways.values()}

    # -- the API's operations ---------------------------------------------------------------------------

    async def create(self, body: Any, actor: str) -> dict[str, Any]:
        """Validate, store, audit, send; the first report. RequestError / NoSigningKey."""
        if self.signer is None:
            raise NoSigningKey
        shown, request, paths = parse_request(body, self.picture.gateways)
        try:
            bc = CountyBroadcast(request, signer=self.signer, tracker=self.tracker,
                                 inventory=self.inventory(), is_online=self.is_online, clock=self._clock,
                                 answer_timeout_s=self.answer_timeout_s, retry_after_s=self.retry_after_s)
        except BroadcastRequestError as exc:
            name = exc.field
            if name.startswith("targets.") and name.split(".")[1].isdigit():
                name = paths[int(name.split(".")[1])]
            raise RequestError(name, str(exc).split(": ", 1)[1]) from None
        shown["expires_at"] = bc.request.get("expires_at")
        entry = _Live(bc, shown, actor)
        report = self._report(entry)
        await asyncio.to_thread(self._save_new, entry, report)
        self.live[bc.id] = entry
        bc.start()
        self._changed(entry)
        log.info("county broadcast %s by %s to %s", bc.id, actor, ", ".join(bc.gateways))
        return json.loads(entry.last)

    def _save_new(self, entry: _Live, report: dict[str, Any]) -> None:
        bc = entry.bc
        with self.store.batch():
            self.store.save_county_broadcast(bc.id, entry.request, entry.created_by, bc.created_at, report)
            self.store.audit(entry.created_by, "county_broadcast.create", f"county_broadcast:{bc.id}",
                             {"request": entry.request, "gateways": bc.gateways})

    async def cancel(self, broadcast_id: str, actor: str) -> dict[str, Any] | None:
        """Stop sending and cancel it on the gateways that accepted it; None if unknown.
        RequestError when it is only history (not followed since a restart); NoSigningKey."""
        if self.signer is None:
            raise NoSigningKey
        entry = self.live.get(broadcast_id)
        if entry is None:
            stored = await asyncio.to_thread(self.store.county_broadcast, broadcast_id)
            if stored is None:
                return None
            raise RequestError("broadcast_id", "this broadcast is no longer followed by the service "
                                               "(finished, or sent before a restart): nothing to cancel")
        if entry.cancelled_by is None:
            entry.cancelled_by = actor
            accepted = entry.bc.cancel()
            for gateway, gateway_broadcast in accepted:
                self._send_cancel(entry, gateway, gateway_broadcast)
            await asyncio.to_thread(self.store.audit, actor, "county_broadcast.cancel",
                                    f"county_broadcast:{broadcast_id}",
                                    {"gateways": {gw: bid for gw, bid in accepted}})
            self._changed(entry)
        return json.loads(entry.last)

    def _send_cancel(self, entry: _Live, gateway: str, gateway_broadcast: str) -> None:
        assert self.signer is not None
        cancel = entry.cancels.setdefault(gateway, _Cancel(gateway_broadcast))
        first = cancel.correlation_ids[0] if cancel.correlation_ids else None  # a retry keeps the id
        envelope = self.signer.envelope("cancel", gateway, {"broadcast_id": gateway_broadcast},
                                        correlation_id=first)
        cancel.correlation_ids.append(self.tracker.send(gateway, "cancel", envelope))
        cancel.sent_at = self._clock()

    async def list(self, limit: int = 100) -> list[dict[str, Any]]:
        """Newest first: the live report of those being followed, the stored one of the others."""
        rows = await asyncio.to_thread(self.store.county_broadcasts, limit)
        return [self._served(row) for row in rows]

    async def get(self, broadcast_id: str) -> dict[str, Any] | None:
        entry = self.live.get(broadcast_id)
        if entry is not None:
            return json.loads(entry.last)
        row = await asyncio.to_thread(self.store.county_broadcast, broadcast_id)
        return None if row is None else self._served(row)

    def _served(self, row: dict[str, Any]) -> dict[str, Any]:
        entry = self.live.get(row["id"])
        if entry is not None:
            return json.loads(entry.last)
        return {**row["report"], "live": False}

    # -- from the ingest --------------------------------------------------------------------------------

    def on_response(self, gateway: str, command: str, payload: bytes) -> None:
        try:
            if command == "broadcast":
                for entry in list(self.live.values()):
                    if entry.bc.on_response(gateway, payload):
                        for gw, bid in entry.bc.take_cancels():
                            self._send_cancel(entry, gw, bid)
                        self._changed(entry)
                        return
            cid = self.tracker.on_response(gateway, command, payload)
            if command == "cancel" and cid is not None:
                for entry in self.live.values():
                    cancel = entry.cancels.get(gateway)
                    if cancel is not None and cid in cancel.correlation_ids:
                        answer = self.tracker.result(cid)
                        if cancel.answer is None or (answer and answer.get("ok") is True):
                            cancel.answer = answer
                        self._changed(entry)
        except Exception:
            log.exception("county broadcasts: cannot apply %s's %s answer", gateway, command)

    def on_report(self, gateway: str, broadcast_id: str, payload: bytes) -> None:
        try:
            for entry in list(self.live.values()):
                if entry.bc.on_broadcast_report(gateway, broadcast_id, payload):
                    self._changed(entry)
        except Exception:
            log.exception("county broadcasts: cannot apply %s's report on %s", gateway, broadcast_id)

    def on_status(self, gateway: str, status: str) -> None:
        try:
            for entry in list(self.live.values()):
                if gateway not in entry.bc.gateways:
                    continue
                if status == "online":
                    entry.bc.on_gateway_online(gateway)
                    cancel = entry.cancels.get(gateway)
                    if cancel is not None and cancel.answer is None \
                            and len(cancel.correlation_ids) < CANCEL_ATTEMPTS:
                        self._send_cancel(entry, gateway, cancel.broadcast_id)
                else:
                    entry.bc.on_gateway_offline(gateway)
                self._changed(entry)
        except Exception:
            log.exception("county broadcasts: cannot apply %s going %s", gateway, status)

    # -- time -------------------------------------------------------------------------------------------

    def tick(self) -> None:
        """Retries (the commands module's and the cancels'), expiry, retirement of finished ones."""
        now = self._clock()
        for bid, entry in list(self.live.items()):
            entry.bc.tick()
            for gateway, cancel in entry.cancels.items():
                if (cancel.answer is None and cancel.sent_at is not None
                        and now - cancel.sent_at >= self.answer_timeout_s and self.is_online(gateway)
                        and len(cancel.correlation_ids) < CANCEL_ATTEMPTS):
                    self._send_cancel(entry, gateway, cancel.broadcast_id)
            report = self._changed(entry)
            finished = report["state"] == "done" and all(c.answer is not None for c in entry.cancels.values())
            if finished and entry.done_at is None:
                entry.done_at = now
            if (entry.done_at is not None and now - entry.done_at >= RETIRE_DONE_S) \
                    or now - entry.bc.expires_at >= RETIRE_EXPIRED_S:
                self._dirty[bid] = {**report, "live": False}
                del self.live[bid]

    async def run(self) -> None:
        """Tick and write the changed reports down, until cancelled."""
        try:
            while True:
                try:
                    self.tick()
                except Exception:
                    log.exception("county broadcasts: tick failed")
                await self.flush()
                await asyncio.sleep(self.tick_s)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.flush())

    async def flush(self) -> None:
        dirty, self._dirty = self._dirty, {}
        if not dirty:
            return
        try:
            await asyncio.to_thread(self._write, dirty)
        except Exception:
            log.exception("cannot store %d county broadcast reports; retrying", len(dirty))
            self._dirty = {**dirty, **self._dirty}

    def _write(self, dirty: dict[str, dict[str, Any]]) -> None:
        with self.store.batch():
            for bid, report in dirty.items():
                self.store.update_county_broadcast(bid, report)

    # -- the report -------------------------------------------------------------------------------------

    def _report(self, entry: _Live) -> dict[str, Any]:
        report = entry.bc.report()
        report.update(request=entry.request, created_by=entry.created_by, cancelled_by=entry.cancelled_by,
                      live=True)
        for row in report["gateways"]:
            cancel = entry.cancels.get(row["gateway"])
            row["cancel"] = None if cancel is None else cancel.view()
        return report

    def _changed(self, entry: _Live) -> dict[str, Any]:
        """The current report; if it differs from the last one, queued for the database and the SSE."""
        report = self._report(entry)
        text = json.dumps(report, ensure_ascii=False, sort_keys=True, default=str)
        if text != entry.last:
            entry.last = text
            self._dirty[entry.bc.id] = report
            self.picture.notify({"type": "county_broadcast", **report})
        return report
