"""The CAP alert inbox: every warning received, what was decided about it, and by whom.

A warning arrives (API, feed poller, county MQTT, signed county command) and goes through
:meth:`AlertService.ingest`:

1. parse (``controller/alerts/cap.py``); a refused document is audited ``alert.refused`` and re-raised;
2. dedup by (sender, identifier, sent): a known alert is answered with its record, never acted on twice;
3. **store first** (raw document too, disposition ``received``), so a crash between receiving and
   deciding never loses a warning — :meth:`AlertService.start` finishes what a crash left ``received``;
4. Update / Cancel: the referenced alerts of the *same sender* are closed — their broadcasts cancelled
   even while playing, their pending approval closed — and marked ``superseded`` / ``cancelled``;
   the Cancel itself is ``recorded``, an Update is then processed as a new alert;
5. area (``controller/alerts/area.py``) → ``not_applicable`` if it touches none of our terminals;
6. rules (``controller/alerts/rules.py``) → ``broadcast`` at once, ``pending`` approval (with a deadline
   and a timeout policy), or ``recorded`` (Test/Draft/System/Exercise, expired, rule says so).

The plan (terminals, villages, text, the broadcast request) is stored for every applicable alert,
so the inbox shows what an alert would do before anyone approves it. Every decision is audited and
published on the bus (``alert.received`` once per new alert with its first disposition,
``alert.decided`` for every later change), so the API's event stream and MQTT carry them.
Decisions are serialised by one lock: a duty officer and the approval timeout cannot both decide.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, tzinfo
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from controller.alerts.area import AreaMatch, match_area
from controller.alerts.cap import MAX_CAP_BYTES, CapAlert, CapError, Info, MsgType, Reference, parse_cap
from controller.alerts.rules import Action, Decision, build_request, compose_text, decide, emergency_level
from controller.broadcast.model import FINAL_STATES, BroadcastRequest
from controller.broadcast.ports import BroadcastPort
from controller.config import Config
from controller.core.actors import Actor, Role
from controller.core.errors import Conflict, Invalid, NotFound
from controller.core.events import AlertDecided, AlertReceived, EventBus
from controller.core.lifecycle import cancel_and_wait
from controller.speech.tts import TextTooLong
from controller.storage.journal import DuplicateError, Store

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
MAX_IDLE_S = 30.0
"""The timeout loop looks at pending alerts at least this often (it is woken for new ones)."""


class Disposition(StrEnum):
    """What became of an alert (docs/alerts.md)."""

    RECEIVED = "received"              # stored, not yet decided (only seen after a crash)
    BROADCAST = "broadcast"            # submitted to the engine: broadcast_id
    PENDING = "pending"                # awaiting a duty officer's approval
    REJECTED = "rejected"
    EXPIRED = "expired"                # approval timed out (on_timeout expire) or expired while pending
    RECORDED = "recorded"              # kept, never played: Test/Draft/System, expired, rule, Ack, Cancel
    NOT_APPLICABLE = "not_applicable"  # touches none of this gateway's terminals
    CANCELLED = "cancelled"            # a later Cancel stopped it
    SUPERSEDED = "superseded"          # a later Update replaced it
    FAILED = "failed"                  # could not be submitted (reason)


def new_alert_id() -> str:
    """Readable and unique, like broadcast ids: ``al-20261128-031502-a1b2c3``."""
    return f"al-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def iso(ts: float | None, tz: tzinfo) -> str | None:
    """Epoch seconds as ISO 8601 in the gateway's time zone ``tz`` (None stays None)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz).isoformat(timespec="seconds")


_ENCODING = re.compile(rb"""^\s*<\?xml[^>]*encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")


def document_text(raw: bytes) -> str:
    """The stored CAP document as text, decoded as its XML declaration says (UTF-8 by default)."""
    match = _ENCODING.match(raw[:200])
    encoding = match.group(1).decode("ascii") if match else "utf-8"
    try:
        return raw.decode(encoding, errors="replace")
    except LookupError:  # an encoding Python does not know: show what can be shown
        return raw.decode("utf-8", errors="replace")


class AlertService:
    """Ingests CAP alerts, decides by the rules, runs the approval workflow (see module doc)."""

    def __init__(self, cfg: Config, store: Store, engine: BroadcastPort, bus: EventBus, *,
                 clock: Clock | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.engine = engine
        self.bus = bus
        self._now: Clock = clock or (lambda: datetime.now(UTC))
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._system = Actor.system()

    def _ts(self) -> float:
        return self._now().timestamp()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Finish alerts a crash left undecided, then watch approval deadlines and expiry."""
        for rec in self.store.list_alerts(Disposition.RECEIVED, limit=100_000, oldest_first=True):
            await self._reprocess(rec)
        self._task = asyncio.create_task(self._timeouts(), name="alert approval timeouts")

    async def stop(self) -> None:
        """Stop the timeout loop; pending alerts stay pending in the store (and after a restart)."""
        await cancel_and_wait(self._task)
        self._task = None

    async def _reprocess(self, rec: dict[str, Any]) -> None:
        full = self.store.get_alert(rec["id"], document=True)
        if full is None:
            return
        a = rec["actor"]
        actor = Actor(name=a["name"], role=Role(a["role"]) if a["role"] else None, token_id=a["token_id"],
                      remote=a["remote"], via=a["via"])
        try:
            alert = parse_cap(full["document"])
        except CapError as exc:  # a parser change since: say so rather than leave it undecided
            self._settle(rec["id"], Disposition.FAILED, f"cannot re-read the stored document: {exc}")
            return
        log.info("alert %s was stored but not decided before a restart; deciding it now", rec["id"])
        async with self._lock:
            await self._process(rec["id"], alert, actor, rec["source_level"])

    # ------------------------------------------------------------------ ingest

    async def ingest(self, document: bytes | str, *, source: str, actor: Actor,
                     source_level: str | None = None) -> dict[str, Any]:
        """Parse, dedup, store, decide and act on one CAP document; the alert record.

        Raises CapError (a ValueError; ``element`` names where) for a document that is not a usable
        CAP alert — audited ``alert.refused`` first. A duplicate gets the stored record with
        ``duplicate: True`` and nothing else happens.
        """
        raw = document.encode("utf-8") if isinstance(document, str) else bytes(document)
        alert = self._parse(raw, source, actor)
        known = self.store.find_alerts(*alert.key)
        if known:
            return {**self.record(known[0]), "duplicate": True}
        alert_id = new_alert_id()
        try:
            self.store.add_alert(self._new_record(alert_id, alert, raw, source, source_level), actor)
        except DuplicateError:  # the same alert arrived twice at once (feed and county): the other won
            known_now = self.store.find_alerts(*alert.key)
            if known_now:
                return {**self.record(known_now[0]), "duplicate": True}
            raise
        self.store.audit(actor, "alert.received", alert_id, {
            "source": source, "sender": alert.sender, "identifier": alert.identifier, "sent": alert.sent_text,
            "msg_type": alert.msg_type.value, "status": alert.status.value})
        async with self._lock:
            await self._process(alert_id, alert, actor, source_level)
        stored = self.store.get_alert(alert_id)
        assert stored is not None
        return {**self.record(stored), "duplicate": False}

    def _parse(self, raw: bytes, source: str, actor: Actor) -> CapAlert:
        try:
            if len(raw) > MAX_CAP_BYTES:
                raise CapError(f"document is {len(raw)} bytes; at most {MAX_CAP_BYTES} bytes are accepted")
            return parse_cap(raw)
        except CapError as exc:
            self._refused(actor, source, raw, exc)
            raise
        except Exception as exc:  # a parser bug must be a refusal, never a half-accepted alert
            log.exception("CAP parser failed on a document from %s", source)
            error = CapError(f"the document could not be read ({type(exc).__name__})")
            self._refused(actor, source, raw, error)
            raise error from exc

    def _refused(self, actor: Actor, source: str, raw: bytes, exc: CapError) -> None:
        self.store.audit(actor, "alert.refused", "", {"source": source, "reason": exc.message,
                                                      "element": exc.element, "bytes": len(raw)})
        log.warning("CAP document from %s refused: %s", source, exc)

    def _new_record(self, alert_id: str, alert: CapAlert, raw: bytes, source: str,
                    source_level: str | None) -> dict[str, Any]:
        info = alert.info_for(self.cfg.alerts.languages)
        return {"id": alert_id, "sender": alert.sender, "identifier": alert.identifier,
                "sent": alert.sent_text, "msg_type": alert.msg_type.value, "status": alert.status.value,
                "dialect": alert.dialect.value, "source": source, "source_level": source_level,
                "received_at": self._ts(),
                "expires_at": info.expires.timestamp() if info is not None and info.expires else None,
                "summary": _summary(alert, info), "document": raw,
                "disposition": Disposition.RECEIVED.value}

    # ------------------------------------------------------------------ deciding

    async def _process(self, alert_id: str, alert: CapAlert, actor: Actor, source_level: str | None) -> None:
        """Decide and act on a stored alert (lock held); never leaves it ``received`` unless killed."""
        try:
            await self._decide(alert_id, alert, actor, source_level)
        except Exception as exc:
            log.exception("deciding alert %s failed", alert_id)
            self._settle(alert_id, Disposition.FAILED, f"internal error while deciding: {exc}; see the log")

    async def _decide(self, alert_id: str, alert: CapAlert, actor: Actor, source_level: str | None) -> None:
        now = self._now()
        notes: list[str] = []
        if alert.msg_type in (MsgType.UPDATE, MsgType.CANCEL):
            notes = await self._apply_references(alert_id, alert, actor)
        if alert.msg_type is MsgType.CANCEL:
            done = "; ".join(notes) or "it references no alert"
            self._settle(alert_id, Disposition.RECORDED, f"Cancel message: {done}")
            return
        suffix = f" ({'; '.join(notes)})" if notes else ""
        info = alert.info_for(self.cfg.alerts.languages)
        match = match_area(self.cfg, info) if info is not None else None
        if info is not None and match is not None and not match.applicable:
            areas = "; ".join(a.desc or ",".join(a.area_codes) for a in info.areas) or "none given"
            self._settle(alert_id, Disposition.NOT_APPLICABLE,
                         f"touches none of this gateway's terminals (gateway area "
                         f"{self.cfg.gateway.area_code}; alert areas: {areas}){suffix}")
            return
        decision = decide(self.cfg.alerts, alert, info, now)
        if info is None or match is None:
            self._settle(alert_id, Disposition.RECORDED, decision.reason + suffix, rule=decision.rule_id)
            return
        plan = self._plan(info, match)
        if decision.action is Action.RECORD:
            self._settle(alert_id, Disposition.RECORDED, decision.reason + suffix, rule=decision.rule_id,
                         plan=plan)
            return
        try:
            request = build_request(self.cfg, alert, info, decision, match, plan["text"],
                                    default_source_level=source_level or "county")
        except (ValidationError, ValueError) as exc:
            self._settle(alert_id, Disposition.FAILED, f"cannot build the broadcast: {_short(exc)}{suffix}",
                         rule=decision.rule_id, plan=plan)
            return
        plan["request"] = request.model_dump(mode="json", by_alias=True, exclude_none=True)
        if decision.action is Action.BROADCAST:
            await self._broadcast_now(alert_id, request, plan, decision, actor, suffix)
        else:
            deadline = now.timestamp() + decision.approval_timeout_s
            self._settle(alert_id, Disposition.PENDING, decision.reason + suffix, rule=decision.rule_id,
                         plan=plan, approval_deadline=deadline, on_timeout=decision.on_timeout)
            self._wake.set()

    def _plan(self, info: Info, match: AreaMatch) -> dict[str, Any]:
        """What the alert would do here: shown in the inbox before anyone approves it."""
        return {"terminals": list(match.terminals), "villages": list(match.villages),
                "whole_gateway": match.whole_gateway, "why": dict(match.why),
                "text": compose_text(self.cfg, info, match), "request": None}

    async def _broadcast_now(self, alert_id: str, request: BroadcastRequest, plan: dict[str, Any],
                             decision: Decision, actor: Actor, suffix: str) -> None:
        try:
            broadcast_id = await self.engine.submit(request, replace(actor, via="cap"))
        except ValueError as exc:  # targets reach nothing, text too long: recorded as failed, never lost
            self._settle(alert_id, Disposition.FAILED, f"the engine refused the broadcast: {exc}{suffix}",
                         rule=decision.rule_id, plan=plan)
            return
        self._settle(alert_id, Disposition.BROADCAST, decision.reason + suffix, rule=decision.rule_id,
                     plan=plan, broadcast_id=broadcast_id)

    def _settle(self, alert_id: str, disposition: Disposition, reason: str, *, rule: str | None = None,
                plan: dict[str, Any] | None = None, broadcast_id: str | None = None,
                approval_deadline: float | None = None, on_timeout: str | None = None) -> None:
        """The first decision about a new alert: stored, audited (by the gateway), published."""
        decided_by = f"rule:{rule}" if rule else self._system.name
        self.store.update_alert(alert_id, disposition=disposition.value, reason=reason, rule=rule, plan=plan,
                                broadcast_id=broadcast_id, approval_deadline=approval_deadline,
                                on_timeout=on_timeout, decided_by=decided_by, decided_at=self._ts())
        self.store.audit(self._system, f"alert.{disposition.value}", alert_id,
                         {"reason": reason, "rule": rule, "broadcast_id": broadcast_id,
                          "terminals": plan["terminals"] if plan else None})
        rec = self.store.get_alert(alert_id)
        summary = rec["summary"] if rec else {}
        self.bus.publish(AlertReceived(alert_id=alert_id, disposition=disposition.value,
                                       cap_event=summary.get("event"), severity=summary.get("severity"),
                                       headline=summary.get("headline"), level=summary.get("level"),
                                       villages=tuple(plan["villages"]) if plan else (),
                                       broadcast_id=broadcast_id, reason=reason))
        log.info("alert %s: %s (%s)", alert_id, disposition.value, reason)

    # ------------------------------------------------------------------ Update / Cancel

    async def _apply_references(self, alert_id: str, alert: CapAlert, actor: Actor) -> list[str]:
        """Close what an Update/Cancel references (same sender only); one note per reference."""
        closing = Disposition.SUPERSEDED if alert.msg_type is MsgType.UPDATE else Disposition.CANCELLED
        notes: list[str] = []
        for ref in alert.references:
            if ref.sender != alert.sender:
                notes.append(f"reference to {ref.identifier} of another sender ({ref.sender}) ignored")
                continue
            found = [r for r in self._referenced(ref) if r["id"] != alert_id]
            if ref.identifier_only:  # "earlier alerts": a re-issue sent after this message stays
                later = [r for r in found if (t := _sent_at(r)) is not None and t > alert.sent]
                notes += [f"{r['id']} ({ref.identifier}, sent {r['sent']}) was sent after this "
                          f"{alert.msg_type}, left as it is" for r in later]
                found = [r for r in found if r not in later]
                if later and not found:
                    continue
            if not found:
                verb = "supersede" if closing is Disposition.SUPERSEDED else "cancel"
                notes.append(f"referenced alert {_ref_words(ref)} is not known here: nothing to {verb}")
                continue
            for target in found:
                if target["disposition"] in (Disposition.SUPERSEDED, Disposition.CANCELLED):
                    notes.append(f"{target['id']} was already {target['disposition']}")
                    continue
                notes.append(await self._close(target, closing, alert_id, actor))
        return notes

    def _referenced(self, ref: Reference) -> list[dict[str, Any]]:
        """The stored alerts one reference names, oldest first.

        An identifier alone (national variant) names every alert of that sender and identifier,
        whatever its ``sent``. A triple names the key as written; failing that the same moment
        written another way (the two dialects write times differently), or the identifier alone
        when its time cannot be read.
        """
        if ref.sent is None:
            return self.store.find_alerts(ref.sender, ref.identifier)
        return self.store.find_alerts(ref.sender, ref.identifier, ref.sent) or [
            r for r in self.store.find_alerts(ref.sender, ref.identifier)
            if ref.sent_at is None or _sent_at(r) == ref.sent_at]

    async def _close(self, target: dict[str, Any], closing: Disposition, by_id: str, actor: Actor) -> str:
        """Stop the target's broadcast (even playing) or close its approval; mark it closed."""
        detail = ""
        broadcast_id = target["broadcast_id"]
        stopped = False
        if broadcast_id:
            record = self.store.get_broadcast(broadcast_id)
            if record is not None and record["state"] not in FINAL_STATES:
                stopped = await self.engine.cancel(broadcast_id, replace(actor, via="cap"))
                detail = f"; broadcast {broadcast_id} {'cancelled' if stopped else 'could not be cancelled'}"
            elif record is not None:
                detail = f"; its broadcast {broadcast_id} had already ended ({record['state'].name.lower()})"
        verb = "superseded by" if closing is Disposition.SUPERSEDED else "cancelled by"
        reason = f"{verb} {by_id} (was {target['disposition']}){detail}"
        self.store.update_alert(target["id"], disposition=closing.value, reason=reason,
                                decided_by=actor.name, decided_at=self._ts())
        self.store.audit(actor, f"alert.{closing.value}", target["id"],
                         {"by": by_id, "was": target["disposition"], "broadcast_id": broadcast_id,
                          "broadcast_stopped": stopped})
        self.bus.publish(AlertDecided(alert_id=target["id"], disposition=closing.value, by=actor.name,
                                      broadcast_id=broadcast_id, reason=reason))
        action = "supersedes" if closing is Disposition.SUPERSEDED else "cancels"
        return f"{action} {target['id']}{detail}"

    # ------------------------------------------------------------------ approval workflow

    async def approve(self, alert_id: str, actor: Actor, text: str | None = None) -> dict[str, Any]:
        """Play a pending alert, with its planned text or ``text`` as edited by the duty officer."""
        async with self._lock:
            rec = self._pending(alert_id, "approved")
            now = self._now().timestamp()
            plan = dict(rec["plan"])
            body = dict(plan["request"])
            edited = text is not None and text.strip() != plan["text"]
            if text is not None:
                text = text.strip()
                if not text:
                    raise Invalid("is empty", "text")
                limit = self.cfg.speech.max_chars
                if len(text) > limit:
                    raise TextTooLong(len(text), limit)
                body["text"] = text
            try:
                request = BroadcastRequest.model_validate(body)
            except ValidationError as exc:
                raise Invalid(_short(exc), "text") from None
            if edited:
                plan["original_text"] = plan["text"]
            plan.update(text=body["text"], request=body)
            return await self._play_pending(rec, request, plan, actor, now, edited=edited, by_timeout=False)

    async def reject(self, alert_id: str, actor: Actor, reason: str | None = None) -> dict[str, Any]:
        """Decide a pending alert is not played; audited with who, when and why."""
        async with self._lock:
            rec = self._pending(alert_id, "rejected")
            reason = (reason or "").strip() or None
            why = f"rejected by {actor.name}" + (f": {reason}" if reason else "")
            self._change(rec["id"], Disposition.REJECTED, why, actor, "alert.rejected", {"reason": reason})
            return self._fresh(rec["id"])

    def _pending(self, alert_id: str, verb: str) -> dict[str, Any]:
        """The alert if it is awaiting a decision; expires it first if its CAP expiry has passed."""
        rec = self.store.get_alert(alert_id)
        if rec is None:
            raise NotFound(f"no alert '{alert_id}'")
        if rec["disposition"] == Disposition.PENDING and _expired(rec, self._now().timestamp()):
            self._expire(rec, f"the alert expired at {self._iso(rec['expires_at'])} before a decision")
            rec = self.store.get_alert(alert_id) or rec
        if rec["disposition"] != Disposition.PENDING:
            raise Conflict(f"alert '{alert_id}' is {rec['disposition']}, not pending: "
                           f"only a pending alert can be {verb} ({rec['reason']})")
        return rec

    async def _play_pending(self, rec: dict[str, Any], request: BroadcastRequest, plan: dict[str, Any],
                            actor: Actor, now: float, *, edited: bool, by_timeout: bool) -> dict[str, Any]:
        alert_id = rec["id"]
        try:
            broadcast_id = await self.engine.submit(request, actor)
        except TextTooLong:  # the officer can shorten the text: the alert stays pending
            raise
        except ValueError as exc:  # targets changed since: failed with the reason, never lost
            why = f"approved by {actor.name} but the engine refused the broadcast: {exc}"
            self._change(alert_id, Disposition.FAILED, why, actor, "alert.failed", {"reason": why}, plan=plan)
            return self._fresh(alert_id)
        if by_timeout:
            why = f"no decision within {_duration(rec)}; played as the rule says (on_timeout: play)"
        else:
            why = f"approved by {actor.name}" + (" with edited text" if edited else "")
        details = {"broadcast_id": broadcast_id, "text_edited": edited, "by_timeout": by_timeout,
                   "text": plan["text"] if edited else None}
        self._change(alert_id, Disposition.BROADCAST, why, actor, "alert.approved", details, plan=plan,
                     broadcast_id=broadcast_id)
        return self._fresh(alert_id)

    def _expire(self, rec: dict[str, Any], why: str) -> None:
        self._change(rec["id"], Disposition.EXPIRED, why, self._system, "alert.expired", {"reason": why})

    def _change(self, alert_id: str, disposition: Disposition, why: str, actor: Actor, action: str,
                details: dict[str, Any], **fields: Any) -> bool:
        """Decide a pending alert (only while it is still pending): stored, audited with who, published."""
        if not self.store.update_alert(alert_id, expect=[Disposition.PENDING], disposition=disposition.value,
                                       reason=why, decided_by=actor.name, decided_at=self._ts(), **fields):
            return False
        self.store.audit(actor, action, alert_id, details)
        self.bus.publish(AlertDecided(alert_id=alert_id, disposition=disposition.value, by=actor.name,
                                      broadcast_id=fields.get("broadcast_id"), reason=why))
        log.info("alert %s: %s (%s)", alert_id, disposition.value, why)
        return True

    # ------------------------------------------------------------------ approval deadlines

    async def _timeouts(self) -> None:
        """Expire or play pending alerts whose deadline or CAP expiry passed; sleep until the next."""
        while True:
            self._wake.clear()
            try:
                delay = await self._check_pending()
            except Exception:
                log.exception("checking pending alerts failed")
                delay = MAX_IDLE_S
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):  # not wait_for: 3.11's can lose a cancel
                    await self._wake.wait()

    async def _check_pending(self) -> float:
        """Act on due pending alerts; seconds until the next deadline or expiry (at most MAX_IDLE_S)."""
        async with self._lock:
            now = self._now().timestamp()
            moments: list[float] = []
            for rec in self.store.list_alerts(Disposition.PENDING, limit=100_000, oldest_first=True):
                deadline = rec["approval_deadline"]
                if _expired(rec, now):
                    expired_at = self._iso(rec["expires_at"])
                    self._expire(rec, f"the alert expired at {expired_at} before a decision")
                elif deadline is not None and deadline <= now:
                    await self._on_timeout(rec, now)
                else:
                    moments += [t for t in (deadline, rec["expires_at"]) if t is not None]
        if not moments:
            return MAX_IDLE_S
        return min(MAX_IDLE_S, max(0.0, min(moments) - self._now().timestamp()) + 0.01)

    async def _on_timeout(self, rec: dict[str, Any], now: float) -> None:
        if rec["on_timeout"] != "play":
            self._expire(rec, f"no decision within {_duration(rec)} (on_timeout: expire); not played")
            return
        try:
            request = BroadcastRequest.model_validate(rec["plan"]["request"])
        except (ValidationError, KeyError, TypeError) as exc:
            self._expire(rec, f"no decision in time and the stored plan is unusable: {_short(exc)}")
            return
        try:
            await self._play_pending(rec, request, dict(rec["plan"]), self._system, now, edited=False,
                                     by_timeout=True)
        except TextTooLong as exc:  # the planned text no longer fits the speech limit
            self._expire(rec, f"no decision in time and the planned broadcast was refused: {exc.explain()}")

    # ------------------------------------------------------------------ reading

    def _iso(self, ts: float | None) -> str | None:
        return iso(ts, self.cfg.gateway.tz)

    def record(self, rec: dict[str, Any], *, document: bool = False) -> dict[str, Any]:
        """A stored alert as the API shows it (docs/alerts.md)."""
        summary = rec["summary"]
        out = {"id": rec["id"], "sender": rec["sender"], "identifier": rec["identifier"], "sent": rec["sent"],
               "msg_type": rec["msg_type"], "status": rec["status"], "dialect": rec["dialect"],
               "source": rec["source"], "source_level": rec["source_level"],
               "ingested_by": rec["actor"]["name"], "received_at": self._iso(rec["received_at"]), **summary,
               "disposition": rec["disposition"], "reason": rec["reason"], "rule": rec["rule"],
               "broadcast_id": rec["broadcast_id"], "plan": rec["plan"], "decided_by": rec["decided_by"],
               "decided_at": self._iso(rec["decided_at"]),
               "approval_deadline": self._iso(rec["approval_deadline"]),
               "on_timeout": rec["on_timeout"]}
        if document and "document" in rec:
            out["document"] = document_text(rec["document"])
        return out

    def get(self, alert_id: str) -> dict[str, Any] | None:
        """One alert with its document (the XML text as received)."""
        rec = self.store.get_alert(alert_id, document=True)
        return self.record(rec, document=True) if rec is not None else None

    def _fresh(self, alert_id: str) -> dict[str, Any]:
        rec = self.store.get_alert(alert_id)
        assert rec is not None
        return self.record(rec)

    def list(self, disposition: str | None = None, limit: int = 50,
             offset: int = 0) -> builtins.list[dict[str, Any]]:
        """Newest first, optionally only one disposition (``pending``: the duty officer's inbox)."""
        return [self.record(r) for r in self.store.list_alerts(disposition, limit, offset)]


def _summary(alert: CapAlert, info: Info | None) -> dict[str, Any]:
    """What the inbox lists about an alert, taken from the info block it acts on."""
    out: dict[str, Any] = {
        "sent_at": alert.sent.isoformat(),
        "references": [{"sender": r.sender, "identifier": r.identifier, "sent": r.sent}
                       for r in alert.references],
        "warnings": list(alert.warnings)}
    if info is None:
        return {**out, **dict.fromkeys(_INFO_FIELDS), "areas": []}
    return {**out, "event": info.event, "event_type": info.event_type, "severity": info.severity.value,
            "level": emergency_level(info), "colour": info.severity_colour, "headline": info.headline,
            "expires": info.expires.isoformat() if info.expires else None,
            "areas": [a.desc for a in info.areas], "language": info.language, "urgency": info.urgency,
            "certainty": info.certainty, "sender_name": info.sender_name, "description": info.description,
            "instruction": info.instruction}


_INFO_FIELDS = ("event", "event_type", "severity", "level", "colour", "headline", "expires", "language",
                "urgency", "certainty", "sender_name", "description", "instruction")


def _ref_words(ref: Reference) -> str:
    """A reference as a reason names it, saying whether it was an identifier alone."""
    if ref.sent is None:
        return f"{ref.identifier} (identifier only: any sent time, sender {ref.sender})"
    return f"{ref.identifier} (sent {ref.sent})"


def _sent_at(rec: dict[str, Any]) -> datetime | None:
    text = rec["summary"].get("sent_at")
    return datetime.fromisoformat(text) if text else None


def _expired(rec: dict[str, Any], now: float) -> bool:
    return rec["expires_at"] is not None and rec["expires_at"] <= now


def _duration(rec: dict[str, Any]) -> str:
    """How long the approval window was, for reasons: ``600 s``."""
    deadline, decided = rec["approval_deadline"], rec["decided_at"]
    if deadline is None or decided is None:
        return "the approval time"
    return f"{max(0.0, deadline - decided):.0f} s"


def _short(exc: Exception) -> str:
    """A pydantic error in one line: ``field: problem``."""
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(map(str, first.get("loc", ())))
        problem = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        return f"{where}: {problem}" if where else problem
    return str(exc)

