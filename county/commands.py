"""County commands: sign them, send them, match the gateways' answers, and follow one county-wide broadcast.

The gateways accept a command only if it is signed by a county key they know, fresh, never seen
before and addressed to them (docs/county-commands.md). The signed bytes come from
``controller.uplink.signing`` — the one contract module the county shares with the gateway — so
both sides cannot drift apart. Nothing here owns an MQTT client: ``CommandTracker`` is given a
``publish(topic, payload)`` callable and is fed the responses by whoever subscribes (the county
service wires paho to it), which keeps this module pure logic that the tests can drive directly.

A ``CountyBroadcast`` is one warning sent to several townships: it works out which gateways an
area code concerns from their ``birth`` inventories, sends each a signed ``broadcast`` command
(later, if the gateway is offline now), follows the answers and the ``broadcasts/<id>`` reports
and sums them into one report with one county coverage figure. Given a CAP document instead of a
text, it sends the signed ``alert`` command: each township's plan decides, and the report shows its
disposition (played and followed, pending approval, recorded, not applicable). Its ``snapshot`` is
what the service stores to carry on after a restart (``restore``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import os
import re
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from gmssl import sm2

from controller.uplink.signing import signed_bytes
from county.cap import CapError, read_cap

KeyType = Literal["ed25519", "sm2"]
Publish = Callable[[str, bytes], None]

_SM2_N = int(sm2.default_ecc_table["n"], 16)
_PEM_PRIVATE = re.compile(r"-----BEGIN ([A-Z0-9 ]*PRIVATE KEY)-----")
AREA_CODE = re.compile(r"^[0-9]{12}$")
MAX_RESULTS = 10_000
"""Answers the tracker remembers; the oldest go first (a county sends far fewer per hour)."""


class SigningKeyError(ValueError):
    """The county's private key cannot be used; the message says what is wrong with it."""


# -- signing --------------------------------------------------------------------------------------


class CountySigner:
    """Signs command envelopes with the county's private key (Ed25519, or SM2 over SM3)."""

    def __init__(self, key_type: KeyType, key_id: str, private_key_text: str) -> None:
        """``private_key_text``: Ed25519 — PEM (PKCS#8) or the raw 32-byte seed in hex or base64;
        SM2 — the private scalar d as 64 hex digits. Raises SigningKeyError."""
        if not 1 <= len(key_id) <= 64:
            raise SigningKeyError("key_id: must be 1-64 characters (county.keys[].id on the gateways)")
        self.key_type: KeyType = key_type
        self.key_id = key_id
        if key_type == "ed25519":
            self._ed = _load_ed25519(private_key_text)
            self.public_key_text = self._ed.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")
        elif key_type == "sm2":
            self._sm2_d = _load_sm2(private_key_text)
            self.public_key_text = _sm2_point(self._sm2_d)
        else:
            raise SigningKeyError(f"type: {key_type!r} is not a key type (ed25519 or sm2)")

    def sign(self, message: bytes) -> bytes:
        """The raw signature: Ed25519's 64 bytes, or SM2's 64-byte r ‖ s."""
        if self.key_type == "ed25519":
            return self._ed.sign(message)
        crypt = sm2.CryptSM2(private_key=self._sm2_d, public_key=self.public_key_text)
        crypt.public_key = self.public_key_text  # gmssl's lstrip("04") would eat a key's leading 0/4 digits
        while True:
            # Never gmssl's default k (Python's `random`): a predictable k gives the private key away.
            k = f"{secrets.randbelow(_SM2_N - 1) + 1:064x}"
            signature = crypt.sign_with_sm3(message, k)
            if signature:
                return bytes.fromhex(signature)

    def envelope(self, command: str, gateway: str, args: Mapping[str, Any], *,
                 correlation_id: str | None = None) -> dict[str, Any]:
        """A signed envelope for ``command`` on ``gateway``, ready to publish as JSON.

        ``ts`` is an integer (the format advises against floats anywhere in the signed bytes).
        A retry passes the first attempt's ``correlation_id`` (with a fresh nonce and ts): the
        gateway then answers it from its first execution instead of executing it again.
        """
        env: dict[str, Any] = {"correlation_id": correlation_id or uuid.uuid4().hex, "gateway": gateway,
                               "ts": int(time.time()), "nonce": secrets.token_hex(16),
                               "key_id": self.key_id, "args": json.loads(json.dumps(dict(args)))}
        env["sig"] = base64.b64encode(self.sign(signed_bytes(command, env))).decode("ascii")
        return env


def _load_ed25519(text: str) -> Ed25519PrivateKey:
    text = text.strip()
    pem = _PEM_PRIVATE.search(text)
    if pem is not None:
        try:
            key = serialization.load_pem_private_key(text.encode("ascii"), password=None)
        except (ValueError, TypeError) as exc:
            raise SigningKeyError(f"not a readable unencrypted PEM private key ({exc})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise SigningKeyError(f"expected an Ed25519 private key, found {type(key).__name__}")
        return key
    if "PUBLIC KEY" in text:
        raise SigningKeyError("this is a public key; the county signs with its private key")
    compact = "".join(text.split())
    raw = b""
    if re.fullmatch(r"[0-9a-fA-F]{64}", compact):
        raw = bytes.fromhex(compact)
    else:
        with contextlib.suppress(binascii.Error):
            raw = base64.b64decode(compact, validate=True)
    if len(raw) != 32:
        raise SigningKeyError("an Ed25519 private key is PEM (PKCS#8) or the 32-byte seed in hex "
                              "(64 digits) or base64")
    return Ed25519PrivateKey.from_private_bytes(raw)


def _load_sm2(text: str) -> str:
    compact = "".join(text.split())
    if _PEM_PRIVATE.search(text):
        raise SigningKeyError("an SM2 private key is given as d in 64 hex digits, not PEM "
                              "(`ebc county keygen --type sm2` writes one)")
    if not re.fullmatch(r"[0-9a-fA-F]{64}", compact):
        raise SigningKeyError("an SM2 private key is the scalar d as 64 hex digits")
    d = int(compact, 16)
    if not 1 <= d <= _SM2_N - 2:
        raise SigningKeyError("the SM2 private key is out of range (1 ≤ d ≤ n-2)")
    return f"{d:064x}"


def _sm2_point(d_hex: str) -> str:
    """x ‖ y of d·G, 128 hex digits: what a gateway takes as ``county.keys[].public_key``."""
    point = sm2.CryptSM2(private_key=d_hex, public_key="")._kg(int(d_hex, 16), sm2.default_ecc_table["g"])
    if not re.fullmatch(r"[0-9a-f]{128}", point):
        raise SigningKeyError("gmssl returned an unexpected public point")  # never seen; refuse loudly
    return point


def keygen(key_type: KeyType, out_path: Path) -> str:
    """Write a new private key to ``out_path`` (mode 0600; never overwrites) and return the public key
    text to paste into each gateway's ``county.keys[].public_key``."""
    if key_type == "ed25519":
        key = Ed25519PrivateKey.generate()
        text = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode("ascii")
    elif key_type == "sm2":
        text = f"{secrets.randbelow(_SM2_N - 2) + 1:064x}\n"  # d uniformly in [1, n-2]
    else:
        raise SigningKeyError(f"type: {key_type!r} is not a key type (ed25519 or sm2)")
    public = CountySigner(key_type, "keygen", text).public_key_text
    try:
        fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise FileExistsError(f"{out_path}: already exists; a key is never overwritten "
                              f"(move it away first if you really mean to replace it)") from None
    with os.fdopen(fd, "w", encoding="ascii") as out:
        os.fchmod(out.fileno(), 0o600)  # whatever the umask
        out.write(text)
    return public


# -- sending and answers -----------------------------------------------------------------------------


@dataclass
class _Pending:
    gateway: str
    command: str
    sent_at: float
    result: dict[str, Any] | None = None
    waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[dict[str, Any] | None]]] = field(
        default_factory=list)


class CommandTracker:
    """Publishes signed commands and matches ``<prefix>/<gw>/cmd/<name>/response`` by correlation id.

    Thread-safe: responses usually arrive on paho's thread while ``wait`` runs on an asyncio loop.
    """

    def __init__(self, publish: Publish, prefix: str = "ebc", *, max_results: int = MAX_RESULTS) -> None:
        self._publish = publish
        self.prefix = prefix
        self._max = max_results
        self._lock = threading.Lock()
        self._commands: OrderedDict[str, _Pending] = OrderedDict()

    def topic(self, gateway: str, command: str) -> str:
        return f"{self.prefix}/{gateway}/cmd/{command}"

    def send(self, gateway: str, command: str, envelope: Mapping[str, Any]) -> str:
        """Publish ``envelope`` on ``<prefix>/<gateway>/cmd/<command>``; returns its correlation id."""
        correlation_id = str(envelope["correlation_id"])
        if envelope.get("gateway") != gateway:
            raise ValueError(f"gateway: the envelope is signed for {envelope.get('gateway')!r}, "
                             f"not {gateway!r} (the gateway would refuse it)")
        with self._lock:
            self._commands[correlation_id] = _Pending(gateway, command, time.time())
            self._commands.move_to_end(correlation_id)
            while len(self._commands) > self._max:
                self._commands.popitem(last=False)
        payload = json.dumps(envelope, ensure_ascii=False, allow_nan=False).encode("utf-8")
        self._publish(self.topic(gateway, command), payload)
        return correlation_id

    def expect(self, correlation_id: str, gateway: str, command: str, sent_at: float) -> None:
        """Match answers to a command sent before (by this county before a restart, or by another
        instance that handed the broadcast over): its late answer still counts."""
        with self._lock:
            if correlation_id not in self._commands:
                self._commands[correlation_id] = _Pending(gateway, command, sent_at)
                while len(self._commands) > self._max:
                    self._commands.popitem(last=False)

    def on_response(self, gateway: str, command: str, payload: bytes) -> str | None:
        """Record an answer; returns the correlation id it answers, or None if it is not ours.

        The first answer counts, except that an ``ok: true`` replaces an earlier ``replayed``:
        QoS 1 may deliver a command twice, and the gateway executes it once.
        """
        doc = _json_object(payload)
        if doc is None or not isinstance(doc.get("correlation_id"), str):
            return None
        correlation_id = doc["correlation_id"]
        wake: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[dict[str, Any] | None]]] = []
        with self._lock:
            pending = self._commands.get(correlation_id)
            if pending is None or pending.gateway != gateway or pending.command != command:
                return None
            previous = pending.result
            first = previous is None
            if previous is None or (doc.get("ok") is True and previous.get("error") == "replayed"):
                pending.result = doc
            if first:
                wake, pending.waiters = pending.waiters, []
            result = pending.result
        for loop, fut in wake:
            loop.call_soon_threadsafe(_settle, fut, result)
        return correlation_id

    def result(self, correlation_id: str) -> dict[str, Any] | None:
        """The gateway's answer, or None while there is none (or the id is unknown)."""
        with self._lock:
            pending = self._commands.get(correlation_id)
            return None if pending is None else pending.result

    def sent(self, correlation_id: str) -> tuple[str, str, float] | None:
        """(gateway, command, sent at) of a command this tracker sent."""
        with self._lock:
            pending = self._commands.get(correlation_id)
            return None if pending is None else (pending.gateway, pending.command, pending.sent_at)

    async def wait(self, correlation_id: str, timeout: float) -> dict[str, Any] | None:
        """The answer, waiting at most ``timeout`` seconds; None if none came (or the id is unknown)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[dict[str, Any] | None] = loop.create_future()
        with self._lock:
            pending = self._commands.get(correlation_id)
            if pending is None or pending.result is not None:
                return None if pending is None else pending.result
            pending.waiters.append((loop, fut))
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return None
        finally:
            with self._lock:
                if pending.waiters:
                    pending.waiters = [(lp, f) for lp, f in pending.waiters if f is not fut]


def _settle(fut: asyncio.Future[dict[str, Any] | None], value: dict[str, Any] | None) -> None:
    if not fut.done():
        fut.set_result(value)


def _json_object(payload: bytes | str) -> dict[str, Any] | None:
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


# -- one county-wide broadcast ---------------------------------------------------------------------


class BroadcastRequestError(ValueError):
    """A county broadcast request that cannot be sent; ``field`` names what is wrong."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


def area_prefix(code: str) -> str:
    """The significant part of a 12-digit area code: trailing zero groups widen the region
    (the same rule as the gateway's targets, docs/api.md)."""
    if code == "0" * 12:
        return ""
    for width in (2, 4, 6, 9):
        if code[width:] == "0" * (12 - width):
            return code[:width]
    return code


def area_covers(region: str, code: str) -> bool:
    return code.startswith(area_prefix(region))


@dataclass(frozen=True)
class _Device:
    id: str | None
    area_code: str
    terminal: bool
    """False for an FM transmitter: keyed only for the whole township (docs/api.md targets)."""


Inventory = Mapping[str, Sequence[str | Mapping[str, Any]]]
"""Gateway id → its devices' area codes, or the device objects of its ``birth`` (id, area_code, kind)."""

FINAL_GATEWAY_STATES = frozenset({"succeeded", "failed", "cancelled", "refused", "expired", "undelivered",
                                  "recorded", "not_applicable", "rejected", "approval_expired", "superseded"})
"""A township in one of these has nothing more to do (``pending_approval`` is not one: a duty officer
may still approve the alert, and its broadcast is then followed like any other)."""
DISPOSITION_STATES = {"pending": "pending_approval", "recorded": "recorded",
                      "not_applicable": "not_applicable", "failed": "failed", "rejected": "rejected",
                      "expired": "approval_expired",
                      "cancelled": "cancelled", "superseded": "superseded", "received": "pending_decision"}
"""A gateway alert's disposition (docs/alerts.md) → the township's state in the county report, when
the alert did not (or not yet) start a broadcast."""
BROADCAST_STATES = {1: "waiting", 2: "playing", 3: "succeeded", 4: "failed", 5: "cancelled"}
RETRYABLE = frozenset({"unavailable", "internal_error"})
"""Refusals the county sends again, under the same correlation id (``unavailable``: a gateway that
is stopping; after an ``internal_error`` a gateway that may have executed it answers ``interrupted``)."""
OUTCOMES = ("succeeded", "partial", "failed", "unreachable")


@dataclass
class _Gateway:
    """What one township gateway made of the county broadcast."""

    id: str
    args: dict[str, Any]
    estimated: int
    state: str = "offline"
    correlation_ids: list[str] = field(default_factory=list)
    attempts: int = 0
    sent_at: float | None = None
    answered_at: float | None = None
    retry_at: float | None = None
    error: dict[str, Any] | None = None
    broadcast_id: str | None = None
    other_broadcast_ids: list[str] = field(default_factory=list)
    broadcast_state: str | None = None
    state_seq: int = -1
    reason: str | None = None
    targets: Any = None
    """What the report shows as the township's targets (the ``broadcast`` args' ``targets``, or for an
    alert the area codes of it that concern this township, or ``{"all": true}`` when chosen as such)."""
    alert: dict[str, Any] | None = None
    """For an alert fan-out: the gateway's alert id, disposition, duplicate flag and reason."""
    alert_seq: int = -1
    gateway_coverage: float | None = None
    outcomes: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    early: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """Reports that arrived before the answer naming their broadcast id (two paths, no order)."""


def command_correlation_id(broadcast_id: str, gateway: str, command: str = "") -> str:
    """The correlation id of every attempt of one county broadcast's command to one gateway: derived,
    not random, so a retry after a county crash still matches the gateway's first execution (the
    gateway executes a command once per key and correlation id). At most 128 characters."""
    cid = "/".join(part for part in (broadcast_id, gateway, command) if part)
    if len(cid) <= 128:
        return cid
    return f"{broadcast_id[:64]}/{hashlib.sha256(cid.encode('utf-8')).hexdigest()[:40]}"


class CountyBroadcast:
    """One warning across several townships: fan-out, (re)sending, answers, reports, one coverage.

    Feed it ``on_response`` (``cmd/broadcast/response``), ``on_broadcast_report``
    (``broadcasts/<id>``), ``on_gateway_online`` (``status`` = ``online``) and call ``tick()`` now
    and then (retries). All methods are thread-safe; ``publish`` is called with the lock held, so
    it must not block (paho's ``publish`` only queues).
    """

    REQUEST_FIELDS = frozenset({"text", "class", "severity", "tone", "repeat", "title", "expires_at",
                                "targets", "source", "language", "gap_s", "volume"})
    ALERT_FIELDS = frozenset({"alert", "targets", "expires_at"})
    """With ``alert`` (a CAP document as text) the gateways get the signed ``alert`` command instead:
    each decides by its own plan (预案) whether it plays, waits for a duty officer or only records."""

    def __init__(self, request: Mapping[str, Any], *, signer: CountySigner, tracker: CommandTracker,
                 inventory: Inventory, is_online: Callable[[str], bool],
                 clock: Callable[[], float] = time.time, default_valid_s: float = 3600.0,
                 answer_timeout_s: float = 15.0, retry_after_s: float = 2.0, max_attempts: int = 20,
                 broadcast_id: str | None = None) -> None:
        """Validates ``request`` (BroadcastRequestError names the field). Nothing is sent before
        :meth:`start`. Without ``expires_at`` the broadcast stays valid for ``default_valid_s``:
        a warning that reaches an offline township hours late would do more harm than good."""
        self.id = broadcast_id or uuid.uuid4().hex
        self._signer, self._tracker, self._is_online, self._clock = signer, tracker, is_online, clock
        self._answer_timeout_s, self._retry_after_s = answer_timeout_s, retry_after_s
        self._max_attempts = max_attempts
        self._lock = threading.RLock()
        self.created_at = clock()
        self._gateways: dict[str, _Gateway] = {}
        if "alert" in request:
            self.command = "alert"
            self.request, plan, expires = _validate_alert(request, inventory, self.created_at)
        else:
            self.command = "broadcast"
            self.request, args, targets, expires = _validate(request)
            plan = {gw: (gw_args, estimated, gw_args["targets"])
                    for gw, (gw_args, estimated) in _fan_out(targets, inventory, args).items()}
        self.expires_at = expires.timestamp() if expires is not None else self.created_at + default_valid_s
        for gw_id, (gw_args, estimated, shown) in plan.items():
            self._gateways[gw_id] = _Gateway(gw_id, gw_args, estimated, targets=shown)
        self._by_cid: dict[str, str] = {}
        self.started = False
        self.cancelled_at: float | None = None
        self._to_cancel: list[tuple[str, str]] = []

    @property
    def gateways(self) -> list[str]:
        return list(self._gateways)

    # -- surviving a restart -----------------------------------------------------------------------

    _SAVED = ("state", "correlation_ids", "attempts", "sent_at", "answered_at", "retry_at", "error",
              "broadcast_id", "other_broadcast_ids", "broadcast_state", "state_seq", "reason",
              "gateway_coverage", "targets", "alert", "alert_seq")

    def snapshot(self) -> dict[str, Any]:
        """Everything needed to carry on after a restart, JSON-ready. The command args are kept once
        (the townships' differ only in ``targets``); commands are signed again when (re)sent."""
        with self._lock:
            gateways = []
            common: dict[str, Any] = {}
            for gw in self._gateways.values():
                common = {k: v for k, v in gw.args.items() if k != "targets"}
                gateways.append({"id": gw.id, "estimated": gw.estimated,
                                 "args_targets": gw.args.get("targets"),
                                 "outcomes": {d: [seq, data] for d, (seq, data) in gw.outcomes.items()},
                                 **{k: getattr(gw, k) for k in self._SAVED}})
            return json.loads(json.dumps({
                "v": 1, "id": self.id, "command": self.command, "created_at": self.created_at,
                "expires_at": self.expires_at, "request": self.request, "started": self.started,
                "cancelled_at": self.cancelled_at, "to_cancel": self._to_cancel, "args": common,
                "gateways": gateways}, default=str))

    @classmethod
    def restore(cls, snap: Mapping[str, Any], *, signer: CountySigner, tracker: CommandTracker,
                is_online: Callable[[str], bool], clock: Callable[[], float] = time.time,
                answer_timeout_s: float = 15.0, retry_after_s: float = 2.0,
                max_attempts: int = 20) -> CountyBroadcast:
        """A county broadcast as :meth:`snapshot` left it; the commands it had sent are expected again
        by ``tracker``, so their answers still count. Nothing is sent until :meth:`tick`."""
        self = cls.__new__(cls)
        self.id, self.command = str(snap["id"]), str(snap["command"])
        self._signer, self._tracker, self._is_online, self._clock = signer, tracker, is_online, clock
        self._answer_timeout_s, self._retry_after_s = answer_timeout_s, retry_after_s
        self._max_attempts = max_attempts
        self._lock = threading.RLock()
        self.created_at, self.expires_at = float(snap["created_at"]), float(snap["expires_at"])
        self.request = snap["request"]
        self.started, self.cancelled_at = bool(snap["started"]), snap["cancelled_at"]
        self._to_cancel = [(str(g), str(b)) for g, b in snap["to_cancel"]]
        self._gateways, self._by_cid = {}, {}
        for row in snap["gateways"]:
            args = dict(snap["args"])
            if row["args_targets"] is not None:
                args["targets"] = row["args_targets"]
            gw = _Gateway(row["id"], args, int(row["estimated"]),
                          **{k: row[k] for k in cls._SAVED if k in row})
            gw.outcomes = {d: (int(seq), data) for d, (seq, data) in row["outcomes"].items()}
            self._gateways[gw.id] = gw
            for cid in gw.correlation_ids:
                self._by_cid[cid] = gw.id
                tracker.expect(cid, gw.id, self.command, gw.sent_at or self.created_at)
        return self

    def args_for(self, gateway: str) -> dict[str, Any]:
        """The ``broadcast`` command's args for ``gateway`` (a copy)."""
        return json.loads(json.dumps(self._gateways[gateway].args))

    def expired(self) -> bool:
        return self._clock() >= self.expires_at

    def start(self) -> None:
        """Send to every concerned gateway that is online; the others wait for ``on_gateway_online``."""
        with self._lock:
            self.started = True
            for gw in self._gateways.values():
                if self._is_online(gw.id):
                    self._send(gw)

    def on_gateway_online(self, gateway: str) -> None:
        """The gateway's ``status`` went ``online``: send what it has not acknowledged yet."""
        with self._lock:
            gw = self._gateways.get(gateway)
            if gw is None or not self.started or self.cancelled_at is not None:
                return
            if gw.state == "offline":  # a command in flight was moved here by on_gateway_offline
                self._send(gw)

    def cancel(self) -> list[tuple[str, str]]:
        """Stop: nothing more is sent, a gateway that has not accepted it is ``cancelled`` at once.
        Returns (gateway, its broadcast id) for each gateway that accepted it and has not finished:
        the caller sends those a signed ``cancel``. A command still in flight that is accepted later
        shows up in :meth:`take_cancels`."""
        with self._lock:
            if self.cancelled_at is None:
                self.cancelled_at = self._clock()
                for gw in self._gateways.values():
                    if gw.broadcast_id is None:
                        # an alert waiting for a duty officer stays shown as such: the county cannot
                        # withdraw it (a CAP Cancel can); if it is approved, its broadcast is cancelled
                        if gw.state not in FINAL_GATEWAY_STATES and gw.state != "pending_approval":
                            gw.state = "cancelled"
                    elif gw.broadcast_state not in ("succeeded", "failed", "cancelled"):
                        self._to_cancel.append((gw.id, gw.broadcast_id))
            return self.take_cancels()

    def take_cancels(self) -> list[tuple[str, str]]:
        """(gateway, broadcast id) accepted since :meth:`cancel` and not yet handed out."""
        with self._lock:
            out, self._to_cancel = self._to_cancel, []
            return out

    def on_gateway_offline(self, gateway: str) -> None:
        """The gateway's Will (or a clean stop): a command not yet answered waits for it to return."""
        with self._lock:
            gw = self._gateways.get(gateway)
            if gw is not None and gw.state in ("sent", "retrying"):
                gw.state = "offline"

    def tick(self) -> None:
        """Retries: a retryable refusal after ``retry_after_s``, no answer after ``answer_timeout_s``;
        marks what can no longer be delivered as expired."""
        with self._lock:
            if not self.started or self.cancelled_at is not None:
                return
            now = self._clock()
            for gw in self._gateways.values():
                if gw.state == "offline" and now >= self.expires_at:
                    gw.state = "expired"
                elif self._due(gw, now) and self._is_online(gw.id):
                    self._send(gw)

    def _due(self, gw: _Gateway, now: float) -> bool:
        if gw.state == "retrying":
            return gw.retry_at is not None and now >= gw.retry_at
        if gw.state == "sent":
            return gw.sent_at is not None and now - gw.sent_at >= self._answer_timeout_s
        return gw.state == "offline"  # online again and nobody told us (a missed status message)

    def _send(self, gw: _Gateway) -> None:
        if self._clock() >= self.expires_at:
            gw.state = "expired"
            return
        if gw.attempts >= self._max_attempts:
            gw.state = "undelivered"
            gw.error = {"error": "no_answer", "message": f"no usable answer after {gw.attempts} attempts",
                        **({"last": gw.error} if gw.error else {})}
            return
        # Every attempt, also after a county restart, under one correlation id made from the broadcast
        # and the gateway: a gateway that executed an earlier attempt whose answer was lost answers this
        # one from it ("duplicate") and plays nothing, even if the county crashed before noting the id.
        envelope = self._signer.envelope(self.command, gw.id, gw.args,
                                         correlation_id=command_correlation_id(self.id, gw.id))
        cid = self._tracker.send(gw.id, self.command, envelope)
        self._by_cid[cid] = gw.id
        gw.correlation_ids.append(cid)
        gw.attempts += 1
        gw.sent_at = self._clock()
        gw.answered_at = None
        gw.retry_at = None
        gw.state = "sent"

    def on_response(self, gateway: str, payload: bytes, command: str = "broadcast") -> bool:
        """A ``cmd/<command>/response``; True if it answers one of this broadcast's commands."""
        if command != self.command:
            return False
        with self._lock:
            cid = self._tracker.on_response(gateway, command, payload)
            if cid is None or self._by_cid.get(cid) != gateway:
                return False
            doc = _json_object(payload) or {}
            gw = self._gateways[gateway]
            if doc.get("ok") is True and self.command == "alert" and gw.alert is None:
                gw.alert = {k: doc.get(k) for k in ("alert_id", "disposition", "duplicate", "reason")}
                gw.error = None
                gw.answered_at = self._clock()
                if not isinstance(doc.get("broadcast_id"), str):
                    if gw.state not in FINAL_GATEWAY_STATES:
                        gw.state = DISPOSITION_STATES.get(str(doc.get("disposition")), "answered")
                    return True
            if doc.get("ok") is True and isinstance(doc.get("broadcast_id"), str):
                bid = doc["broadcast_id"]
                if gw.broadcast_id is None:
                    self._accept(gw, bid)
                elif bid != gw.broadcast_id and bid not in gw.other_broadcast_ids:
                    gw.other_broadcast_ids.append(bid)  # a retry after a lost answer played it twice
                return True
            if doc.get("ok") is True:
                return True  # an alert's repeated answer (duplicate): the first one counts
            if gw.broadcast_id is not None:
                return True  # a late refusal of a retry ("replayed", …) changes nothing: it is playing
            if doc.get("error") == "replayed":
                return True  # a QoS 1 duplicate: the "ok" for the same command comes (or came) separately
            gw.answered_at = self._clock()
            gw.error = {k: doc.get(k) for k in ("error", "message", "field") if doc.get(k) is not None}
            if self.cancelled_at is not None:
                return True  # it stays cancelled; the refusal is shown
            if doc.get("error") in RETRYABLE:
                gw.state = "retrying"
                gw.retry_at = self._clock() + self._retry_after_s
            else:
                gw.state = "refused"
            return True

    def _accept(self, gw: _Gateway, bid: str) -> None:
        """The gateway journalled a broadcast for it (a ``broadcast`` answer, or an alert that plays)."""
        gw.broadcast_id = bid
        if self.cancelled_at is not None:  # accepted after the county cancelled it
            self._to_cancel.append((gw.id, bid))
        gw.error = None
        gw.answered_at = self._clock()
        if gw.state not in FINAL_GATEWAY_STATES:
            gw.state = gw.broadcast_state or "accepted"
        early, gw.early = gw.early, []
        for early_bid, report in early:
            if early_bid == bid:
                self._apply_report(gw, report)

    def on_alert_decided(self, gateway: str, seq: int, data: Mapping[str, Any]) -> bool:
        """An ``alert.decided`` event of the gateway (docs/alerts.md): a pending alert approved (its
        broadcast is then followed), rejected or expired; True if it is this fan-out's alert there."""
        with self._lock:
            gw = self._gateways.get(gateway)
            if gw is None or gw.alert is None or data.get("id") != gw.alert.get("alert_id") \
                    or seq <= gw.alert_seq:
                return False
            gw.alert_seq = seq
            gw.alert = {**gw.alert, "disposition": data.get("disposition"), "reason": data.get("reason"),
                        "by": data.get("by")}
            bid = data.get("broadcast_id")
            if isinstance(bid, str) and bid:
                if gw.broadcast_id is None:
                    self._accept(gw, bid)
            elif gw.broadcast_id is None:
                gw.state = DISPOSITION_STATES.get(str(data.get("disposition")), gw.state)
            return True

    def pending_alerts(self) -> list[tuple[str, str]]:
        """(gateway, alert id) of the townships whose alert waits for a decision there."""
        with self._lock:
            return [(gw.id, str(gw.alert["alert_id"])) for gw in self._gateways.values()
                    if gw.alert is not None and gw.broadcast_id is None and gw.state in (
                        "pending_approval", "pending_decision")]

    def followed(self) -> list[tuple[str, str]]:
        """(gateway, broadcast id) of every township broadcast this county broadcast follows."""
        with self._lock:
            return [(gw.id, gw.broadcast_id) for gw in self._gateways.values() if gw.broadcast_id]

    def on_broadcast_report(self, gateway: str, broadcast_id: str, payload: bytes) -> bool:
        """A ``broadcasts/<id>`` message; True if it belongs to this broadcast."""
        doc = _json_object(payload)
        if doc is None or not isinstance(doc.get("data"), dict):
            return False
        with self._lock:
            gw = self._gateways.get(gateway)
            if gw is None:
                return False
            if gw.broadcast_id is None:
                if gw.correlation_ids and len(gw.early) < 1000:
                    gw.early.append((broadcast_id, doc))
                return False
            if broadcast_id != gw.broadcast_id:
                return False
            self._apply_report(gw, doc)
            return True

    def _apply_report(self, gw: _Gateway, doc: dict[str, Any]) -> None:
        data, seq = doc["data"], doc.get("seq")
        seq = seq if isinstance(seq, int) else 0
        if doc.get("kind") == "broadcast.state":
            if seq < gw.state_seq:
                return  # a replay of an older state (at least once, in order per gateway)
            gw.state_seq = seq
            name = data.get("name") or BROADCAST_STATES.get(data.get("state"), "unknown")
            gw.broadcast_state = str(name)
            gw.reason = data.get("reason")
            if isinstance(data.get("coverage"), int | float):
                gw.gateway_coverage = float(data["coverage"])
            gw.state = gw.broadcast_state
        elif doc.get("kind") == "broadcast.outcome" and isinstance(data.get("device"), str):
            previous = gw.outcomes.get(data["device"])
            if previous is None or seq >= previous[0]:  # a later outcome carries the final figures
                gw.outcomes[data["device"]] = (seq, data)

    # -- the report --------------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """One JSON-ready report: per township its state and terminals, and the county coverage."""
        with self._lock:
            now = self._clock()
            rows = [self._gateway_report(gw, now) for gw in self._gateways.values()]
        totals = {k: sum(r["terminals"][k] for r in rows) for k in ("targeted", *OUTCOMES, "pending",
                                                                   "not_played")}
        states = [r["state"] for r in rows]
        return {
            "id": self.id,
            "command": self.command,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "expired": now >= self.expires_at,
            "cancelled_at": self.cancelled_at,
            "request": self.request,
            "state": "done" if all(s in FINAL_GATEWAY_STATES for s in states) else
                     ("not_started" if not self.started else "in_progress"),
            "gateways": rows,
            "by_state": {s: states.count(s) for s in sorted(set(states))},
            "terminals": totals,
            "coverage": (totals["succeeded"] / totals["targeted"]) if totals["targeted"] else None,
        }

    def _gateway_report(self, gw: _Gateway, now: float) -> dict[str, Any]:
        state = "expired" if gw.state == "offline" and now >= self.expires_at else gw.state
        counts = dict.fromkeys(OUTCOMES, 0)
        for _, data in gw.outcomes.values():
            if data.get("outcome") in counts:
                counts[data["outcome"]] += 1
        reported = len(gw.outcomes)
        # The gateway's own outcomes are authoritative once it has finished; before that (or when it
        # never got the command) the estimate from its inventory says what was meant to be reached.
        finished = gw.broadcast_state in ("succeeded", "failed", "cancelled")
        targeted = reported if finished and reported else max(gw.estimated, reported)
        if state == "not_applicable":
            targeted = 0  # the gateway found none of its terminals in the alert's areas
        # Meant to be reached, but nothing will play there: refused, only recorded, rejected, expired…
        not_played = targeted - reported if gw.broadcast_id is None and state in FINAL_GATEWAY_STATES else 0
        terminals = {"targeted": targeted, **counts, "pending": targeted - sum(counts.values()) - not_played,
                     "not_played": not_played}
        return {
            "gateway": gw.id,
            "online": bool(self._is_online(gw.id)),
            "state": state,
            "command": {"attempts": gw.attempts, "sent_at": gw.sent_at,
                        "correlation_id": gw.correlation_ids[-1] if gw.correlation_ids else None,
                        "acked": gw.broadcast_id is not None, "refusal": gw.error},
            "broadcast_id": gw.broadcast_id,
            "duplicate_broadcast_ids": list(gw.other_broadcast_ids),
            "broadcast_state": gw.broadcast_state,
            "reason": gw.reason,
            "gateway_coverage": gw.gateway_coverage,
            "targets": gw.targets,
            "alert": gw.alert,
            "terminals": terminals,
            "coverage": (counts["succeeded"] / targeted) if targeted else None,
            "devices": {dev: {k: data.get(k) for k in ("outcome", "reason", "audible_s", "missed_s",
                                                        "joined_late")}
                        for dev, (_, data) in sorted(gw.outcomes.items())},
        }


def _validate(request: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], list[str],
                                                       datetime | None]:
    """(the request as given, the common command args, the targets, expires_at) or BroadcastRequestError."""
    unknown = sorted(set(request) - CountyBroadcast.REQUEST_FIELDS)
    if unknown:
        raise BroadcastRequestError(unknown[0], "unknown field")
    text = request.get("text")
    if not isinstance(text, str) or not text.strip():
        raise BroadcastRequestError("text", "the text to speak is required")
    klass = request.get("class", "emergency")
    if klass not in ("emergency", "drill", "daily"):
        raise BroadcastRequestError("class", f"{klass!r} is not emergency, drill or daily")
    args: dict[str, Any] = {"class": klass, "text": text}
    severity = request.get("severity")
    if klass == "emergency":
        if not isinstance(severity, int) or isinstance(severity, bool) or not 1 <= severity <= 4:
            raise BroadcastRequestError("severity", "an emergency needs a severity 1 (red) … 4 (blue)")
        args["severity"] = severity
    elif severity is not None:
        raise BroadcastRequestError("severity", "applies to emergency broadcasts only")
    for name, kind in (("title", str), ("tone", str), ("source", str), ("language", str)):
        value = request.get(name)
        if value is not None:
            if not isinstance(value, kind):
                raise BroadcastRequestError(name, "must be a string")
            args[name] = value
    for name, low, high in (("repeat", 1, 10), ("gap_s", 0, 600), ("volume", 0, 100)):
        value = request.get(name)
        if value is not None:
            # integers only: floats in signed bytes are printed differently by other languages
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise BroadcastRequestError(name, f"must be an integer {low}-{high}")
            args[name] = value
    expires = _expiry(request.get("expires_at"))
    if expires is not None:
        args["expires_at"] = expires.isoformat()
    targets = request.get("targets")
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) and t for t in targets):
        raise BroadcastRequestError("targets", "name at least one gateway id or 12-digit area code")
    shown = json.loads(json.dumps({**request, "expires_at": args.get("expires_at")}, default=str))
    return shown, args, list(dict.fromkeys(targets)), expires


def _validate_alert(request: Mapping[str, Any], inventory: Inventory, now: float
                    ) -> tuple[dict[str, Any], dict[str, tuple[dict[str, Any], int, Any]], datetime | None]:
    """(the request as shown, gateway → (its ``alert`` args, terminals expected, targets shown),
    expires_at) for a CAP fan-out, or BroadcastRequestError (``alert: alert/info[0]/severity: …``).

    The townships are those the CAP's area codes concern (an area code of the alert that concerns
    none of ours, such as a neighbouring county's, is left out) plus the ones chosen in ``targets``.
    Each gets the whole document: the gateway matches the areas (polygons and circles too) itself.
    """
    unknown = sorted(set(request) - CountyBroadcast.ALERT_FIELDS)
    if unknown:
        raise BroadcastRequestError(unknown[0], "unknown field (with a CAP alert: alert, targets, "
                                                "expires_at)")
    try:
        cap = read_cap(request.get("alert"))
    except CapError as exc:  # "alert: alert/info[0]/severity: …", but not "alert: alert: …"
        raise BroadcastRequestError("alert", str(exc).removeprefix("alert: ")) from None
    expires = _expiry(request.get("expires_at"))
    if expires is None and cap.expires is not None:
        expires = cap.expires
    if expires is not None and expires.timestamp() <= now:
        raise BroadcastRequestError("alert" if request.get("expires_at") is None else "expires_at",
                                    f"alert/info/expires: it expired at {expires.isoformat()}; no township "
                                    "would play it")
    targets = request.get("targets") or []
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(targets, list) or not all(isinstance(t, str) and t for t in targets):
        raise BroadcastRequestError("targets", "a list of gateway ids and 12-digit area codes")
    devices = {gw: _devices(entries) for gw, entries in inventory.items()}
    ours = [c for c in cap.area_codes
            if any(area_covers(c, d.area_code) for ds in devices.values() for d in ds)]
    if not targets and not ours:
        where = ", ".join(cap.area_codes[:5]) or "none (only polygons or circles, or no area)"
        raise BroadcastRequestError("alert", f"alert/info/area: no area code of the alert concerns a "
                                             f"township of the county (its area codes: {where}); "
                                             "choose the townships")
    explicit = _fan_out(list(dict.fromkeys(targets)), inventory, {})
    by_codes = _fan_out(ours, inventory, {}) if ours else {}
    args = {"cap": cap.text, "source_level": "county"}
    plan: dict[str, tuple[dict[str, Any], int, Any]] = {}
    for gw in devices:
        if gw in by_codes:  # the CAP says which of its villages: that is what it should reach
            shown = by_codes[gw][0]["targets"]
            plan[gw] = (dict(args), by_codes[gw][1], shown)
        elif gw in explicit:
            plan[gw] = (dict(args), explicit[gw][1], explicit[gw][0]["targets"])
    shown_request = {"alert": cap.view(), **({"targets": list(targets)} if targets else {}),
                     "expires_at": expires.isoformat() if expires is not None else None}
    return shown_request, plan, expires


def _expiry(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise BroadcastRequestError("expires_at", f"{value!r} is not an ISO 8601 time") from None
    if not isinstance(value, datetime):
        raise BroadcastRequestError("expires_at", "must be an ISO 8601 time with a time zone")
    if value.tzinfo is None:
        raise BroadcastRequestError("expires_at", "give a time zone, e.g. 2026-11-28T03:15:00+08:00")
    return value.replace(microsecond=0)


def _devices(entries: Iterable[str | Mapping[str, Any]]) -> list[_Device]:
    devices = []
    for entry in entries:
        if isinstance(entry, str):
            devices.append(_Device(None, entry, True))
        elif isinstance(entry.get("area_code"), str):
            devices.append(_Device(entry.get("id"), entry["area_code"],
                                   entry.get("kind", "terminal") != "fm_transmitter"))
    return devices


def _fan_out(targets: list[str], inventory: Inventory, common: Mapping[str, Any]
             ) -> dict[str, tuple[dict[str, Any], int]]:
    """Gateway id → (its ``broadcast`` args, terminals it is expected to reach).

    A gateway id targets the whole gateway (``all``); an area code concerns every gateway with a
    device in it and is passed down as is in ``targets.area_codes``, so the gateway resolves its
    own villages (and keys its FM transmitter only for a code covering the whole township).
    A target that concerns no gateway is an error: it is a typo more often than not.
    """
    whole: set[str] = set()
    codes: dict[str, list[str]] = {}
    devices = {gw: _devices(entries) for gw, entries in inventory.items()}
    for i, target in enumerate(targets):
        if AREA_CODE.match(target):
            concerned = [gw for gw, devs in devices.items() if any(area_covers(target, d.area_code)
                                                                  for d in devs)]
            if not concerned:
                raise BroadcastRequestError(f"targets.{i}", f"area code {target} has no terminal of any "
                                            f"known gateway")
            for gw in concerned:
                codes.setdefault(gw, []).append(target)
        elif target in devices:
            whole.add(target)
        else:
            raise BroadcastRequestError(f"targets.{i}", f"{target!r} is neither a known gateway id nor a "
                                        f"12-digit area code")
    plan: dict[str, tuple[dict[str, Any], int]] = {}
    for gw in [g for g in devices if g in whole or g in codes]:
        devs = devices[gw]
        if gw in whole:
            args_targets: dict[str, Any] = {"all": True}
            estimated = len(devs)
        else:
            args_targets = {"area_codes": codes[gw]}
            covers_all = all(any(area_covers(c, d.area_code) for c in codes[gw]) for d in devs)
            estimated = sum(1 for d in devs if (d.terminal or covers_all)
                            and any(area_covers(c, d.area_code) for c in codes[gw]))
        plan[gw] = ({**common, "targets": args_targets}, estimated)
    return plan
