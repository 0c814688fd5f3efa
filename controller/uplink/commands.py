"""Signed commands from the county centre (``<prefix>/<gw>/cmd/<name>``): check them, then act.

A forged command that plays a false alarm in every village is the worst failure this product can
have, so nothing is executed until every check has passed, in this order (each refusal has its
own code, is answered with the request's correlation id and is audited):

1. ``bad_request``     not UTF-8 JSON, a duplicate key, a missing/unknown/mistyped envelope field
2. ``wrong_gateway``   the signed envelope names another gateway
3. ``unknown_key``     ``key_id`` is not one of the county keys in the config
4. ``bad_signature``   the signature does not verify (see controller/uplink/signing.py for the bytes)
5. ``stale`` / ``from_future``  ``ts`` is more than ``max_skew_s`` from the gateway's clock
6. ``replayed``        the nonce was already used (nonces are in SQLite: a restart keeps them)
7. ``unknown_command`` / ``not_allowed``  no such command / this key may not give it
8. ``conflict``        this key already used the correlation id for another command or other args
   (``interrupted``: a gateway stop cut its execution short, so whether it took effect is unknown)
9. ``bad_args``        the arguments are invalid; the response names the field

Freshness and the nonce are checked only after the signature, so an unauthenticated message can
never use up a genuine command's nonce, nor read a stored answer. After execution, ``not_found``,
``not_cancellable``, ``unavailable``, ``timeout`` or ``internal_error`` may be answered.

``broadcast``, ``cancel`` and ``alert`` change state, so each is executed once per (verified key,
correlation id): the county re-sends a command whose answer was lost with a fresh nonce and the same
correlation id, and gets the stored answer with ``"duplicate": true``. The ids are kept in SQLite
for ``county.command_ttl_s`` (a restart keeps them). The wire format is documented for county
engineers in docs/county-commands.md.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import inspect
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from controller.broadcast.model import FINAL_STATES, BroadcastRequest, SourceLevel
from controller.broadcast.ports import BroadcastPort
from controller.config import Config, CountyCommand, CountyKey
from controller.core.actors import Actor, Role
from controller.storage.journal import Store
from controller.uplink.signing import KeyFormatError, PublicKey, canonical_json, load_public_key, signed_bytes

log = logging.getLogger(__name__)

COMMANDS: tuple[str, ...] = get_args(CountyCommand)
MAX_PAYLOAD_BYTES = 64 * 1024
LINE_CHECK_TIMEOUT_S = 300.0
"""A line check of every terminal measures one after another; give up answering after this long."""

ENVELOPE_FIELDS = frozenset({"correlation_id", "gateway", "ts", "nonce", "key_id", "args", "sig"})
_NONCE = re.compile(r"[\x21-\x7e]{16,64}")  # printable ASCII: hex, base64 and UUIDs all fit
_DEFAULT_SKEW_S = 300.0
_DEFAULT_COMMAND_TTL_S = 86400.0
ONCE_PER_CORRELATION_ID = frozenset({"broadcast", "cancel", "alert"})
"""Commands that change state: executed once per (key, correlation id). ``rebirth`` and
``line_check`` are harmless to repeat, and a repeated line check should measure again."""

Rebirth = Callable[[], Awaitable[None] | None]
AlertIngest = Callable[[bytes, Actor, str], Awaitable[dict[str, Any]]]
"""(CAP document, the verified key as actor, source level) → the inbox's alert record; raises
ValueError (CapError, with ``element``) for a document that is not a usable CAP alert."""
LineCheck = Callable[[list[str] | None], Awaitable[dict[str, Any]]]
Clock = Callable[[], float]
_M = TypeVar("_M", bound=BaseModel)


class Refused(Exception):
    """A command not executed (or failed); becomes ``{"ok": false, "error": code, "message": ...}``."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.field = code, message, field


@dataclass
class _Request:
    """What is known about one command so far (for the response, the audit and the log)."""

    name: str
    correlation_id: str | None = None
    key_id: str | None = None
    """As claimed by the message; trusted only once ``verified``."""
    nonce: str | None = None
    key: CountyKey | None = None
    """The configured key, set once the signature verified with it."""
    duplicate: bool = False
    """Answered from the stored response of an earlier delivery, not executed."""

    @property
    def verified(self) -> bool:
        return self.key is not None

    @property
    def actor(self) -> Actor:
        """The county key once its signature verified, else "unknown" (a claim is not an identity)."""
        if self.key is not None:
            return Actor(name=self.key.id, role=Role.OPERATOR, via="county")
        return Actor(name="unknown", via="county")


_Handler = Callable[[_Request, dict[str, Any]], Awaitable[dict[str, Any]]]


class _NoArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _CancelArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    broadcast_id: str = Field(min_length=1, max_length=100)


class _AlertArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cap: str = Field(min_length=1, description="The CAP document (XML text)")
    source_level: Literal["village", "township", "county", "city", "province", "national"] = Field(
        default="county", description="Who the alert counts as, for priority (relaying a higher level)")


class _LineCheckArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    devices: list[str] | None = Field(default=None, description="Device ids; null or absent: all")


class CountyCommands:
    """Verifies and executes county commands; give every MQTT ``cmd/<name>`` message to :meth:`handle`."""

    def __init__(self, cfg: Config, store: Store, engine: BroadcastPort, *, rebirth: Rebirth,
                 line_check: LineCheck | None, clock: Clock = time.time,
                 line_check_timeout_s: float = LINE_CHECK_TIMEOUT_S,
                 alerts: AlertIngest | None = None, wait_for_start: bool = False) -> None:
        """Raises ValueError if a configured key cannot be loaded (``ebc config check`` reports it too).

        ``wait_for_start``: answer ``unavailable`` until :meth:`start` — the daemon's reporter hears
        commands before the engine, inbox and health they act on have started.
        """
        self.cfg = cfg
        self.store = store
        self.engine = engine
        self._rebirth = rebirth
        self._line_check = line_check
        self._clock = clock
        self._line_check_timeout_s = line_check_timeout_s
        self._alerts = alerts
        self._serving = not wait_for_start
        self._ready = asyncio.Event()
        if self._serving:
            self._ready.set()
        settings = cfg.county
        self._max_skew_s = settings.max_skew_s if settings else _DEFAULT_SKEW_S
        self._nonce_ttl_s = settings.nonce_ttl if settings else 2 * _DEFAULT_SKEW_S
        self._command_ttl_s = settings.command_ttl_s if settings else _DEFAULT_COMMAND_TTL_S
        self._running: dict[tuple[str, str], tuple[asyncio.Lock, list[int]]] = {}
        """(key, correlation id) being executed → its lock and how many deliveries hold or wait for it."""
        base = cfg.path.parent if cfg.path is not None else Path.cwd()
        self._keys: dict[str, tuple[CountyKey, PublicKey]] = {}
        for key in settings.keys if settings else []:
            try:
                self._keys[key.id] = (key, load_public_key(key.type, key.key_text(base)))
            except (OSError, KeyFormatError) as exc:
                raise ValueError(f"county.keys({key.id}): cannot load the public key: {exc}") from None
        self._counts: Counter[tuple[str, str]] = Counter()
        self._handlers: dict[str, _Handler] = {
            "broadcast": self._broadcast, "cancel": self._cancel, "rebirth": self._do_rebirth,
            "line_check": self._do_line_check, "alert": self._alert}

    async def start(self) -> None:
        """Execute commands from now on (what they act on has started)."""
        self._serving = True
        self._ready.set()

    async def stop(self) -> None:
        """Answer ``unavailable`` from now on: the gateway is shutting down."""
        self._serving = False
        self._ready.clear()

    async def ready(self) -> None:
        """Return once commands are executed (the reporter announces ``online`` only then)."""
        await self._ready.wait()

    def counts(self) -> dict[tuple[str, str], int]:
        """Commands handled since start by (command, result); result is ``ok`` or the error code.
        Names that are not commands count as ``other`` so a flood cannot grow the label set."""
        return dict(self._counts)

    async def handle(self, name: str, payload: bytes) -> dict[str, Any]:
        """Check and execute one command; the response to publish on ``.../cmd/<name>/response``.

        Always returns ``{"correlation_id", "ok", ...}`` (correlation_id None if it could not be
        read); never raises (an unexpected failure is answered ``internal_error`` and logged).
        """
        request = _Request(name=name)
        try:
            envelope = _parse(payload, request)
            if not self._serving:
                raise Refused("unavailable", "the gateway is starting or shutting down; try again shortly")
            await self._authenticate(name, envelope, request)
            self._check_fresh(envelope)
            result = await self._execute(request, envelope["args"])
        except Refused as refused:
            return self._answer_refusal(request, refused)
        except Exception:
            log.exception("county command %r (correlation id %r) failed", name[:64], request.correlation_id)
            return self._answer_refusal(request, Refused(
                "internal_error", "the gateway failed while executing the command; see its log"))
        if request.duplicate:
            self._count(name, "duplicate")
            self._audit(request, "county.duplicate", result)
            log.info("county command %s answered as a duplicate, not executed again (key %s, correlation "
                     "id %r)", name, request.key_id, request.correlation_id)
        else:
            self._count(name, "ok")
            self._audit(request, "county.command", result)
            log.info("county command %s executed (key %s, correlation id %r)", name, request.key_id,
                     request.correlation_id)
        return {"correlation_id": request.correlation_id, "ok": True, **result}

    # -- checks -----------------------------------------------------------------------------------

    async def _authenticate(self, name: str, envelope: dict[str, Any], request: _Request) -> None:
        gateway = self.cfg.gateway.id
        if envelope["gateway"] != gateway:
            raise Refused("wrong_gateway", f"this is gateway '{gateway}'; the command is addressed to "
                                           f"'{str(envelope['gateway'])[:64]}'")
        entry = self._keys.get(envelope["key_id"])
        if entry is None:
            known = "no county keys are configured on this gateway" if not self._keys else \
                "it is not one of the county keys configured on this gateway"
            raise Refused("unknown_key", f"key_id '{request.key_id}': {known}")
        key_cfg, key = entry
        try:
            signature = base64.b64decode(envelope["sig"], validate=True)
        except binascii.Error:
            raise Refused("bad_signature", "sig is not valid base64") from None
        # SM2 in pure Python takes milliseconds: off the event loop.
        if not await asyncio.to_thread(key.verify, signature, signed_bytes(name, envelope)):
            raise Refused("bad_signature", f"the signature does not verify with {key_cfg.type} key "
                                           f"'{key_cfg.id}' for command '{name[:64]}' (signed bytes: "
                                           f"ebc-cmd-v1, the command name, the canonical envelope)")
        request.key = key_cfg

    def _check_fresh(self, envelope: dict[str, Any]) -> None:
        now, ts, skew = self._clock(), float(envelope["ts"]), self._max_skew_s
        if now - ts > skew:
            raise Refused("stale", f"the command was signed {now - ts:.0f} s ago; at most {skew:g} s "
                                   f"is accepted (check the county's and the gateway's clocks)")
        if ts - now > skew:
            raise Refused("from_future", f"the command is dated {ts - now:.0f} s in the future; at most "
                                         f"{skew:g} s is accepted (check the county's and the gateway's "
                                         f"clocks)")
        if not self.store.claim_nonce(envelope["key_id"], envelope["nonce"], now + self._nonce_ttl_s, now):
            raise Refused("replayed", "this nonce was already used; every command needs a fresh nonce "
                                      "(a repeated delivery of one command is refused, not executed twice)")

    async def _execute(self, request: _Request, args: dict[str, Any]) -> dict[str, Any]:
        handler = self._handlers.get(request.name)
        if handler is None:
            raise Refused("unknown_command", f"unknown command '{request.name[:64]}' "
                                             f"(known: {', '.join(COMMANDS)})")
        key_cfg = request.key
        assert key_cfg is not None, "executed only after the signature verified"
        if key_cfg.commands is not None and request.name not in key_cfg.commands:
            raise Refused("not_allowed", f"key '{key_cfg.id}' may not give the {request.name} command "
                                         f"(allowed: {', '.join(key_cfg.commands) or 'none'})")
        if request.name in ONCE_PER_CORRELATION_ID:
            return await self._once(request, args, handler)
        return await handler(request, args)

    async def _once(self, request: _Request, args: dict[str, Any], handler: _Handler) -> dict[str, Any]:
        """Execute unless this key already did this correlation id: then its stored answer, marked
        ``duplicate``. Deliveries of one id wait for each other, so the second one sees the first's answer."""
        assert request.key is not None and request.correlation_id is not None
        key = (request.key.id, request.correlation_id)
        lock, users = self._running.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                return await self._once_locked(request, args, handler, key)
        finally:
            users[0] -= 1
            if not users[0]:
                del self._running[key]

    async def _once_locked(self, request: _Request, args: dict[str, Any], handler: _Handler,
                           key: tuple[str, str]) -> dict[str, Any]:
        digest = hashlib.sha256(canonical_json(args)).hexdigest()
        now = self._clock()
        held = self.store.claim_command(*key, request.name, digest, now + self._command_ttl_s, now)
        if held is not None:
            if held["command"] != request.name or held["args_sha256"] != digest:
                what = "another command" if held["command"] != request.name else "other args"
                raise Refused("conflict", f"correlation id '{key[1][:128]}' was already used by key "
                                          f"'{key[0]}' for {what} ({held['command']}); a new request needs "
                                          f"a new correlation id, a retry must repeat the same command and "
                                          f"args")
            if held["response"] is None:
                raise Refused("interrupted", f"an earlier delivery of correlation id '{key[1][:128]}' did "
                                             f"not finish (the gateway failed or stopped while executing "
                                             f"it): whether it took effect is unknown (see the gateway's "
                                             f"broadcasts), so it is not executed again")
            request.duplicate = True
            return {**held["response"], "duplicate": True}
        try:
            result = await handler(request, args)
        except Refused:
            self.store.finish_command(*key, None)  # refused, not executed: a retry may try again
            raise
        # Anything else (a crash half-way, a stop) leaves the claim without an answer: "interrupted".
        self.store.finish_command(*key, result)
        return result

    # -- commands -----------------------------------------------------------------------------------

    async def _broadcast(self, request: _Request, args: dict[str, Any]) -> dict[str, Any]:
        body = _validated(BroadcastRequest, {"source_level": int(SourceLevel.COUNTY), **args})
        try:
            broadcast_id = await self.engine.submit(body, request.actor)
        except ValueError as exc:  # targets reach nothing here, text too long, unknown audio id
            field = getattr(exc, "field", None) or ("text" if body.text is not None else "audio_id")
            raise Refused("bad_args", f"args.{field}: {exc}", f"args.{field}") from None
        return {"broadcast_id": broadcast_id}

    async def _cancel(self, request: _Request, args: dict[str, Any]) -> dict[str, Any]:
        broadcast_id = _validated(_CancelArgs, args).broadcast_id
        record = self.store.get_broadcast(broadcast_id)
        if record is None:
            raise Refused("not_found", f"no broadcast '{broadcast_id}' on this gateway")
        if record["state"] in FINAL_STATES:
            raise Refused("not_cancellable", f"broadcast '{broadcast_id}' is already "
                                             f"{record['state'].name.lower()}")
        if not await self.engine.cancel(broadcast_id, request.actor):
            raise Refused("not_cancellable", f"broadcast '{broadcast_id}' could not be cancelled "
                                             f"(it ended meanwhile)")
        return {"broadcast_id": broadcast_id, "state": "cancelled"}

    async def _do_rebirth(self, request: _Request, args: dict[str, Any]) -> dict[str, Any]:
        _validated(_NoArgs, args)
        outcome = self._rebirth()
        if inspect.isawaitable(outcome):
            await outcome
        return {}

    async def _do_line_check(self, request: _Request, args: dict[str, Any]) -> dict[str, Any]:
        devices = _validated(_LineCheckArgs, args).devices
        known = {d.id for d in self.cfg.devices}
        for i, device in enumerate(devices or []):
            if device not in known:
                raise Refused("bad_args", f"args.devices.{i}: no device '{device[:64]}' on this gateway",
                              f"args.devices.{i}")
        if self._line_check is None:
            raise Refused("unavailable", "line checks are not available on this gateway")
        try:
            results = await asyncio.wait_for(self._line_check(devices), self._line_check_timeout_s)
        except TimeoutError:
            raise Refused("timeout", f"the line check did not finish within "
                                     f"{self._line_check_timeout_s:g} s") from None
        return {"results": json.loads(json.dumps(results, default=str))}  # JSON-safe for the response

    async def _alert(self, request: _Request, args: dict[str, Any]) -> dict[str, Any]:
        """A CAP alert relayed by the county: into the inbox, through the rules like any other."""
        parsed = _validated(_AlertArgs, args)
        if self._alerts is None:
            raise Refused("unavailable", "the CAP alert inbox is not running on this gateway")
        try:
            record = await self._alerts(parsed.cap.encode("utf-8"), request.actor, parsed.source_level)
        except ValueError as exc:  # CapError: what is wrong and where in the document (its message)
            raise Refused("bad_args", f"args.cap: not a usable CAP alert: {exc}", "args.cap") from None
        return {"alert_id": record["id"], "disposition": record["disposition"],
                "duplicate": bool(record.get("duplicate")), "broadcast_id": record.get("broadcast_id"),
                "reason": record.get("reason")}

    # -- answers --------------------------------------------------------------------------------------

    def _answer_refusal(self, request: _Request, refused: Refused) -> dict[str, Any]:
        self._count(request.name, refused.code)
        details: dict[str, Any] = {"error": refused.code, "message": refused.message}
        if refused.field:
            details["field"] = refused.field
        self._audit(request, "county.refused", details)
        log.warning("county command %r refused: %s: %s (key %r, correlation id %r)", request.name[:64],
                    refused.code, refused.message, request.key_id, request.correlation_id)
        response: dict[str, Any] = {"correlation_id": request.correlation_id, "ok": False,
                                    "error": refused.code, "message": refused.message}
        if refused.field:
            response["field"] = refused.field
        return response

    def _audit(self, request: _Request, action: str, details: Mapping[str, Any]) -> None:
        """Audit with the claimed key and nonce in the details; a failing audit never loses the answer."""
        record = {"correlation_id": request.correlation_id, "key_id": request.key_id,
                  "verified": request.verified, "nonce": request.nonce, **details}
        try:
            self.store.audit(request.actor, action, request.name[:64], record)
        except Exception:
            log.exception("cannot audit county command %r", request.name[:64])

    def _count(self, name: str, result: str) -> None:
        self._counts[(name if name in COMMANDS else "other", result)] += 1


def _parse(payload: bytes, request: _Request) -> dict[str, Any]:
    """The envelope, checked field by field; fills in what the response and audit can use."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise Refused("bad_request", f"payload is larger than {MAX_PAYLOAD_BYTES // 1024} KiB")
    try:
        doc = json.loads(payload.decode("utf-8"), object_pairs_hook=_object, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise Refused("bad_request", f"payload is not a UTF-8 JSON document ({str(exc)[:200]})") from None
    if not isinstance(doc, dict):
        raise Refused("bad_request", "payload must be a JSON object (the command envelope)")
    cid = doc.get("correlation_id")
    if isinstance(cid, str) and 0 < len(cid) <= 128:
        request.correlation_id = cid
    if isinstance(doc.get("key_id"), str):
        request.key_id = doc["key_id"][:64]
    if isinstance(doc.get("nonce"), str):
        request.nonce = doc["nonce"][:64]
    missing, unknown = sorted(ENVELOPE_FIELDS - doc.keys()), sorted(doc.keys() - ENVELOPE_FIELDS)
    if missing:
        raise Refused("bad_request", f"missing field(s): {', '.join(missing)}", missing[0])
    if unknown:
        names = [u[:64] for u in unknown]
        raise Refused("bad_request", f"unknown field(s): {', '.join(names[:5])}", names[0])
    if request.correlation_id is None:
        raise Refused("bad_request", "correlation_id: must be a string of 1-128 characters", "correlation_id")
    ts = doc["ts"]
    problems = {
        "gateway": isinstance(doc["gateway"], str) or "must be a string",
        "ts": (isinstance(ts, int | float) and not isinstance(ts, bool) and 0 < ts < 1e11)
        or "must be a number (unix seconds)",
        "nonce": (isinstance(doc["nonce"], str) and bool(_NONCE.fullmatch(doc["nonce"])))
        or "must be 16-64 printable ASCII characters without spaces",
        "key_id": (isinstance(doc["key_id"], str) and 0 < len(doc["key_id"]) <= 64)
        or "must be a string of 1-64 characters",
        "args": isinstance(doc["args"], dict) or "must be a JSON object",
        "sig": isinstance(doc["sig"], str) or "must be a string (base64)",
    }
    for field, ok in problems.items():
        if ok is not True:
            raise Refused("bad_request", f"{field}: {ok}", field)
    return doc


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object that refuses duplicate keys: two readers could disagree about which one counts."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key '{key[:64]}'")
        obj[key] = value
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _validated(model: type[_M], args: dict[str, Any]) -> _M:
    """``args`` as ``model``, or ``bad_args`` naming the first bad field (as ``args.<path>``)."""
    try:
        return model.model_validate(args)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        field = ".".join(["args", *map(str, first.get("loc", ()))])
        kind = first.get("type", "")
        problem = {"extra_forbidden": "unknown field", "missing": "required field is missing"}.get(
            kind, str(first.get("msg", "invalid value")).removeprefix("Value error, "))
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise Refused("bad_args", f"{field}: {problem}{more}", field) from None
