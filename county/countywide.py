"""County-wide broadcasts inside the service: the API's requests → signed commands → one live report.

The commands module (:mod:`county.commands`) is pure logic; this module gives it what the running
service knows — the inventory and online status from the picture, the MQTT connection to publish
on, every command answer and ``broadcasts/<id>`` report from the ingest, a clock that ticks —
and keeps the result: every county broadcast is written to the ``county_broadcasts`` table when it
is created and again whenever its report changes, audited with the operator's token name, and
streamed to the console as an SSE ``county_broadcast`` event.

Everything runs on the event loop (the ingest calls back there); the database is written from a
worker thread, once per tick, with the reports that changed since.

A request with ``alert`` (a CAP document) fans the warning out as signed ``alert`` commands: each
township's gateway decides by its own plan (预案) and answers a disposition, which the report shows;
a broadcast that results is followed like any other, a pending approval until it is decided (the
gateway's ``alert.decided`` event).

**Surviving a restart, and several instances.** With every report the row also keeps the broadcast's
``state`` (:meth:`CountyBroadcast.snapshot`: per township its progress, the correlation ids of the
commands in flight; commands are signed again when resent). One instance follows a broadcast at a
time: it holds a lease on the row (``owner``, ``lease_until``) and renews it every few seconds. On a
clean stop it lets go; any instance (the same one restarted, or another on the shared database) then
takes over what is still to follow — at once, or once the lease has run out after a crash — resends
to townships that were offline while the broadcast is valid, and cancels. A cancel asked through an
instance that does not follow it is written down (``cancel_requested_by``) for the one that does.
Reports are read from the shared database too (the gateways' ``broadcasts/<id>`` and ``alert.decided``
as the ingest stored them), so a report that the broker's share group handed to another instance,
or that arrived while this one restarted, still counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from county.commands import (
    AREA_CODE,
    BroadcastRequestError,
    CommandTracker,
    CountyBroadcast,
    CountySigner,
    command_correlation_id,
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
LEASE_S = 30.0
"""How long an instance's hold on a broadcast lasts unless renewed (renewed every third of it): after
a crash another instance, or the restarted one, takes over after at most this long."""
FOLLOW_STORED_S = 1.0
"""How often the reports other instances (or this one, before a restart) stored are read back."""
STORED_MARGIN_S = 30.0
"""Stored reports are read again from this long before the last read: another instance's writer may
store a report received earlier, and its clock may differ a little from ours."""
API_FIELDS = frozenset({"targets", "class", "severity", "title", "text", "tone", "repeat", "expires_at",
                        "confirm", "source", "language", "gap_s", "volume"})
ALERT_API_FIELDS = frozenset({"alert", "targets", "expires_at", "confirm"})


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

    def saved(self) -> dict[str, Any]:
        return {"broadcast_id": self.broadcast_id, "correlation_ids": self.correlation_ids,
                "sent_at": self.sent_at, "answer": self.answer}

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
    state_text: str = ""
    alert_cursor: dict[str, int] = field(default_factory=dict)
    """Per gateway, the seq up to which its stored ``alert.decided`` events were read."""

    def state(self) -> dict[str, Any]:
        """What a restarted (or another) instance needs to carry on following it."""
        return {"bc": self.bc.snapshot(), "cancelled_by": self.cancelled_by,
                "cancels": {gw: c.saved() for gw, c in self.cancels.items()}}


def parse_request(body: Any, known_gateways: Mapping[str, Any], *, preview: bool = False
                  ) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """The API's body → (the request as shown in the report, the commands module's request, the field
    path of each of its targets). ``targets`` is ``{"gateways": [...], "area_codes": [...]}``."""
    if not isinstance(body, dict):
        raise RequestError("body", "must be a JSON object")
    alert = "alert" in body
    unknown = sorted(set(body) - (ALERT_API_FIELDS if alert else API_FIELDS))
    if unknown:
        raise RequestError(unknown[0], "unknown field" + (
            " (with a CAP alert: alert, targets, expires_at, confirm; the townships' plans decide the rest)"
            if alert else ""))
    if body.get("confirm") is not True and not preview:
        raise RequestError("confirm", "must be true: confirm the broadcast before it is sent")
    targets = body.get("targets")
    if alert and targets is None:
        targets = {}  # the CAP's own area codes choose the townships
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
    if not paths and not alert:
        raise RequestError("targets", "name at least one gateway or area code")
    shown = {k: v for k, v in body.items() if k not in ("confirm", "alert")}
    request = {k: v for k, v in shown.items() if k != "targets"}
    request["targets"] = list(paths)
    if alert:
        shown["targets"] = targets
        request["alert"] = body["alert"]
    return shown, request, list(paths.values())


class CountyBroadcasts:
    """See the module docstring. ``signer`` None: reading works, sending raises :class:`NoSigningKey`."""

    def __init__(self, store: Store, picture: Picture, publish: Callable[[str, bytes], Any], prefix: str,
                 signer: CountySigner | None, *, answer_timeout_s: float = 15.0, retry_after_s: float = 2.0,
                 tick_s: float = TICK_S, clock: Callable[[], float] = time.time, lease_s: float = LEASE_S,
                 instance: str | None = None, connected: Callable[[], bool] = lambda: True) -> None:
        self.store, self.picture, self.signer = store, picture, signer
        self.tracker = CommandTracker(lambda topic, payload: publish(topic, payload), prefix)
        self.answer_timeout_s, self.retry_after_s, self.tick_s = answer_timeout_s, retry_after_s, tick_s
        self._clock = clock
        self._connected = connected
        self.lease_s = lease_s
        self.instance = instance or uuid.uuid4().hex[:16]
        """This instance's name in ``county_broadcasts.owner`` (new at every start)."""
        self.live: dict[str, _Live] = {}
        self._dirty: dict[str, tuple[dict[str, Any], dict[str, Any] | None]] = {}
        self._next_lease = 0.0
        self._next_follow = 0.0
        self._read_pairs: set[tuple[str, str]] = set()
        self._settled: set[str] = set()
        """Being created, or retired here: its row may still look like one to take over (not written yet)."""
        self._read_since = 0.0

    def is_online(self, gateway: str) -> bool:
        """Online, and we are connected: a command published while the county's own connection is down
        would be lost (and then waited for until the answer timeout)."""
        view = self.picture.gateways.get(gateway)
        return view is not None and view.status == "online" and self._connected()

    def inventory(self) -> dict[str, list[dict[str, Any]]]:
        """Gateway id → its devices (id, area code, kind) from the births the picture holds."""
        return {gw.id: [{"id": d.id, "area_code": d.area_code, "kind": d.kind}
                        for d in gw.devices.values() if isinstance(d.area_code, str)]
                for gw in self.picture.gateways.values()}

    # -- the API's operations ---------------------------------------------------------------------------

    def _plan(self, body: Any, preview: bool = False) -> tuple[CountyBroadcast, dict[str, Any]]:
        assert self.signer is not None
        shown, request, paths = parse_request(body, self.picture.gateways, preview=preview)
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
        if bc.command == "alert":
            shown["alert"] = bc.request["alert"]  # its summary; the document itself is in the audit trail
        return bc, shown

    async def preview(self, body: Any) -> dict[str, Any]:
        """What :meth:`create` would send, to whom, without sending or storing anything (the console's
        confirm step). ``confirm`` is not needed. RequestError / NoSigningKey."""
        if self.signer is None:
            raise NoSigningKey
        bc, shown = self._plan(body, preview=True)
        report = bc.report()
        return {"command": bc.command, "request": shown, "expires_at": report["expires_at"],
                "gateways": [{k: row[k] for k in ("gateway", "online", "targets")}
                             | {"targeted": row["terminals"]["targeted"]} for row in report["gateways"]],
                "terminals": {"targeted": report["terminals"]["targeted"]}}

    async def create(self, body: Any, actor: str) -> dict[str, Any]:
        """Validate, store, audit, send; the first report. RequestError / NoSigningKey."""
        if self.signer is None:
            raise NoSigningKey
        bc, shown = self._plan(body)
        entry = _Live(bc, shown, actor)
        self._settled.add(bc.id)
        report = self._report(entry)
        details: dict[str, Any] = {"request": entry.request, "gateways": bc.gateways}
        if bc.command == "alert":
            details["cap"] = bc.args_for(bc.gateways[0])["cap"]
        try:
            await asyncio.to_thread(self._save_new, entry, report, details)
        finally:
            self._settled.discard(bc.id)
        self.live[bc.id] = entry
        bc.start()
        self._changed(entry)
        log.info("county %s %s by %s to %s", bc.command, bc.id, actor, ", ".join(bc.gateways))
        return json.loads(entry.last)

    def _save_new(self, entry: _Live, report: dict[str, Any], details: dict[str, Any]) -> None:
        bc = entry.bc
        with self.store.batch():
            self.store.save_county_broadcast(bc.id, entry.request, entry.created_by, bc.created_at, report,
                                             entry.state(), self.instance, self._clock() + self.lease_s)
            self.store.audit(entry.created_by, "county_broadcast.create", f"county_broadcast:{bc.id}",
                             details)

    async def cancel(self, broadcast_id: str, actor: str) -> dict[str, Any] | None:
        """Stop sending and cancel it on the gateways that accepted it; None if unknown. Followed by
        another instance: the cancel is written down for it. RequestError when it is only history."""
        if self.signer is None:
            raise NoSigningKey
        entry = self.live.get(broadcast_id)
        if entry is None:
            stored = await asyncio.to_thread(self.store.county_broadcast, broadcast_id)
            if stored is None:
                return None
            if not stored["following"]:
                raise RequestError("broadcast_id", "this broadcast is finished (or no longer valid): "
                                                   "nothing to cancel")
            await asyncio.to_thread(self._request_cancel, broadcast_id, actor)
            row = await asyncio.to_thread(self.store.county_broadcast, broadcast_id)
            served = self._served(row or stored)
            return {**served, "cancel_requested_by": served.get("cancel_requested_by") or actor}
        if self._cancel(entry, actor):
            await asyncio.to_thread(self.store.audit, actor, "county_broadcast.cancel",
                                    f"county_broadcast:{broadcast_id}",
                                    {"gateways": {gw: c.broadcast_id for gw, c in entry.cancels.items()}})
        return json.loads(entry.last)

    def _request_cancel(self, broadcast_id: str, actor: str) -> None:
        with self.store.batch():
            self.store.request_county_broadcast_cancel(broadcast_id, actor)
            self.store.audit(actor, "county_broadcast.cancel", f"county_broadcast:{broadcast_id}",
                             {"requested_of": "the county instance that follows it"})

    def _cancel(self, entry: _Live, actor: str) -> bool:
        """Cancel it now (True), or it was already (False)."""
        if entry.cancelled_by is not None:
            return False
        entry.cancelled_by = actor
        for gateway, gateway_broadcast in entry.bc.cancel():
            self._send_cancel(entry, gateway, gateway_broadcast)
        self._changed(entry)
        return True

    def _send_cancel(self, entry: _Live, gateway: str, gateway_broadcast: str) -> None:
        assert self.signer is not None
        cancel = entry.cancels.setdefault(gateway, _Cancel(gateway_broadcast))
        envelope = self.signer.envelope("cancel", gateway, {"broadcast_id": gateway_broadcast},
                                        correlation_id=command_correlation_id(entry.bc.id, gateway, "cancel"))
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
        """Followed here: the live report. Else the stored one; ``live`` while another instance follows
        it (its lease is current), with the cancel asked of it, if any."""
        entry = self.live.get(row["id"])
        if entry is not None:
            return json.loads(entry.last)
        followed = bool(row.get("following") and row.get("owner")
                        and (row.get("lease_until") or 0) > self._clock())
        out = {**row["report"], "live": followed}
        if row.get("cancel_requested_by") and not out.get("cancelled_by"):
            out["cancel_requested_by"] = row["cancel_requested_by"]
        return out

    # -- from the ingest --------------------------------------------------------------------------------

    def on_response(self, gateway: str, command: str, payload: bytes) -> None:
        try:
            if command in ("broadcast", "alert"):
                for entry in list(self.live.values()):
                    if entry.bc.on_response(gateway, payload, command):
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

    # -- what other instances (or this one before a restart) know ---------------------------------------

    async def take_over(self) -> list[str]:
        """Follow the broadcasts nobody follows any more (this instance's own before a restart, or those
        of an instance that stopped); renew the lease on ours, and apply cancels asked elsewhere."""
        if self.signer is None:
            return []  # it could not resend or cancel: leave them to an instance that can
        now = self._clock()
        until = now + self.lease_s
        ids = list(self.live)
        owned = await asyncio.to_thread(self.store.renew_county_broadcasts, self.instance, ids, until)
        for bid in ids:
            entry = self.live.get(bid)
            if entry is None:
                continue
            if bid not in owned:
                log.warning("county broadcast %s is followed by another instance now; letting go", bid)
                del self.live[bid]
                self._dirty.pop(bid, None)
            elif owned[bid] and entry.cancelled_by is None:
                self._cancel(entry, str(owned[bid]))
        rows = await asyncio.to_thread(self.store.claim_county_broadcasts, self.instance, now, until)
        taken = []
        for row in rows:
            if row["id"] in self.live or row["id"] in self._settled:
                continue
            try:
                entry = self._restore(row)
            except Exception:
                log.exception("county broadcast %s: cannot resume from its stored state", row["id"])
                continue
            self.live[row["id"]] = entry
            taken.append(row["id"])
            if row.get("cancel_requested_by") and entry.cancelled_by is None:
                self._cancel(entry, str(row["cancel_requested_by"]))
            self._changed(entry)
        if taken:
            log.info("county broadcasts followed again: %s", ", ".join(taken))
        return taken

    def _restore(self, row: dict[str, Any]) -> _Live:
        assert self.signer is not None
        state = row["state"]
        bc = CountyBroadcast.restore(state["bc"], signer=self.signer, tracker=self.tracker,
                                     is_online=self.is_online, clock=self._clock,
                                     answer_timeout_s=self.answer_timeout_s, retry_after_s=self.retry_after_s)
        entry = _Live(bc, row["request"], row["created_by"], cancelled_by=state.get("cancelled_by"))
        for gw, saved in state.get("cancels", {}).items():
            cancel = entry.cancels[gw] = _Cancel(**saved)
            for cid in cancel.correlation_ids:
                self.tracker.expect(cid, gw, "cancel", cancel.sent_at or bc.created_at)
        entry.state_text = json.dumps(state, sort_keys=True, ensure_ascii=False, default=str)
        return entry

    async def follow_stored(self) -> None:
        """Apply the reports the database holds for the township broadcasts and pending alerts we follow:
        a share group hands each report to one instance, and a restart misses what came meanwhile."""
        started = self._clock()
        pairs = [(gw, bid) for entry in self.live.values() for gw, bid in entry.bc.followed()]
        new = [p for p in pairs if p not in self._read_pairs]  # read in full once, then what changed
        old = [p for p in pairs if p in self._read_pairs]
        since = self._read_since
        pending = [(entry.bc.id, gw, alert_id, entry.alert_cursor.get(gw, -1))
                   for entry in self.live.values() for gw, alert_id in entry.bc.pending_alerts()]
        if not pairs and not pending:
            return

        Decided = list[tuple[str, str, int, dict[str, Any]]]

        def read() -> tuple[list[tuple[str, str, dict[str, Any]]], Decided]:
            reports = self.store.gateway_broadcast_reports(new)
            if old:
                reports += self.store.gateway_broadcast_reports(old, since)
            decided = [(bid, gw, seq, data) for bid, gw, _, after in pending
                       for seq, data in self.store.gateway_events(gw, "alert.decided", after)]
            return reports, decided

        reports, decided = await asyncio.to_thread(read)
        self._read_pairs = set(pairs)
        self._read_since = started - STORED_MARGIN_S
        for gateway, bid, doc in reports:
            self.on_report(gateway, bid, json.dumps(doc).encode("utf-8"))
        for cbid, gateway, seq, data in decided:
            entry = self.live.get(cbid)
            if entry is None:
                continue
            entry.alert_cursor[gateway] = max(seq, entry.alert_cursor.get(gateway, -1))
            if isinstance(data, dict) and entry.bc.on_alert_decided(gateway, seq, data):
                for gw, gw_bid in entry.bc.take_cancels():
                    self._send_cancel(entry, gw, gw_bid)
                self._changed(entry)

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
                self._dirty[bid] = ({**report, "live": False}, None)
                self._settled.add(bid)
                del self.live[bid]

    async def run(self) -> None:
        """Tick, take over and follow what the database says, write the changes down, until cancelled;
        then let go of what we follow, so that the next instance to start takes it over at once."""
        try:
            while True:
                loop_now = self._clock()
                if loop_now >= self._next_lease:
                    self._next_lease = loop_now + self.lease_s / 3
                    try:
                        await self.take_over()
                    except Exception:
                        log.exception("county broadcasts: cannot renew or take over")
                if loop_now >= self._next_follow:
                    self._next_follow = loop_now + FOLLOW_STORED_S
                    try:
                        await self.follow_stored()
                    except Exception:
                        log.exception("county broadcasts: cannot read the stored reports")
                try:
                    self.tick()
                except Exception:
                    log.exception("county broadcasts: tick failed")
                await self.flush()
                await asyncio.sleep(self.tick_s)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._let_go())

    async def _let_go(self) -> None:
        await self.flush()
        if self.live:
            await asyncio.to_thread(self.store.release_county_broadcasts, self.instance)
            self.live.clear()

    async def flush(self) -> None:
        dirty, self._dirty = self._dirty, {}
        if not dirty:
            return
        try:
            await asyncio.to_thread(self._write, dirty)
        except Exception:
            log.exception("cannot store %d county broadcast reports; retrying", len(dirty))
            self._dirty = {**dirty, **self._dirty}

    def _write(self, dirty: dict[str, tuple[dict[str, Any], dict[str, Any] | None]]) -> None:
        with self.store.batch():
            for bid, (report, state) in dirty.items():
                self.store.update_county_broadcast(bid, report, state,
                                                   None if state is None else self.instance)

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
        """The current report; if it (or the state to resume from) differs from the last one, queued for
        the database, and the report for the SSE."""
        report = self._report(entry)
        text = json.dumps(report, ensure_ascii=False, sort_keys=True, default=str)
        state = entry.state()
        state_text = json.dumps(state, ensure_ascii=False, sort_keys=True, default=str)
        if text != entry.last or state_text != entry.state_text:
            if text != entry.last:
                self.picture.notify({"type": "county_broadcast", **report})
            entry.last, entry.state_text = text, state_text
            self._dirty[entry.bc.id] = (report, state)
        return report
