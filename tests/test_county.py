"""Signed county commands (controller/uplink/commands.py, controller/uplink/signing.py) with keys the
tests generate.

The real BroadcastEngine journals and queues what a command submits, on a real Store on disk; its
playing loop is not started (no hardware here). Signatures are made with the libraries themselves
(Ed25519 by ``cryptography``, SM2/SM3 by ``gmssl`` and, where available, by OpenSSL), over bytes
the tests build from the documented rule — not with the code under test.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from gmssl import sm2
from pydantic import ValidationError
from simkit import write_sim_config

from controller.broadcast.engine import BroadcastEngine
from controller.broadcast.model import BroadcastRequest, BroadcastState
from controller.config import Config, ConfigError, CountySettings, load_config
from controller.core.actors import Actor
from controller.core.events import EventBus
from controller.devices.hardware import Hardware
from controller.devices.registry import DeviceRegistry
from controller.speech.tts import SpeechService
from controller.storage.journal import Store
from controller.uplink.commands import CountyCommands
from controller.uplink.signing import KeyFormatError, load_public_key, signed_bytes

GW = "gw-test"
DRILL = {"class": "drill", "targets": {"all": True}, "text": "这是一次应急广播系统测试。"}
EMERGENCY = {"class": "emergency", "severity": 2, "title": "暴雨橙色预警", "targets": {"all": True},
             "text": "濉溪县气象台发布暴雨橙色预警，请村民注意防范。"}

# -- signing as a county engineer would (docs/county-commands.md) -----------------------------------

Signer = Callable[[bytes], bytes]
N = int(sm2.default_ecc_table["n"], 16)


def signed_message(name: str, envelope: dict[str, Any]) -> bytes:
    body = {k: v for k, v in envelope.items() if k != "sig"}
    return b"ebc-cmd-v1\n" + name.encode() + b"\n" + json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sm2_keypair(d: int | None = None) -> tuple[str, str]:
    """(private d, public x‖y) in hex; d uniformly in [1, n-2]; gmssl's curve math for d·G."""
    d = d if d is not None else secrets.randbelow(N - 2) + 1
    point = sm2.CryptSM2(private_key=f"{d:064x}", public_key="")._kg(d, sm2.default_ecc_table["g"])
    return f"{d:064x}", point


def sm2_signer(private_hex: str, public_hex: str, *, der: bool = False) -> Signer:
    def sign(data: bytes) -> bytes:
        crypt = sm2.CryptSM2(private_key=private_hex, public_key=public_hex)
        crypt.public_key = public_hex  # gmssl's lstrip("04") would mangle a key starting with 04
        while True:  # a fresh secret k each time (gmssl's default comes from `random`)
            sig = crypt.sign_with_sm3(data, f"{secrets.randbelow(N - 1) + 1:064x}")
            if sig is not None:
                break
        raw = bytes.fromhex(sig)
        if der:
            return encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        return raw
    return sign


def ed25519_signer(key: Ed25519PrivateKey) -> Signer:
    return key.sign


def ed25519_pem(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def command(name: str, signer: Signer | None, *, key_id: str = "county-ed",
            args: dict[str, Any] | None = None, gateway: str = GW, ts: float | None = None,
            nonce: str | None = None, correlation_id: str | None = None, sign_as: str | None = None,
            edit: Callable[[dict[str, Any]], None] | None = None) -> bytes:
    """An envelope signed for ``sign_as`` (default ``name``); ``edit`` changes it after signing."""
    env: dict[str, Any] = {"correlation_id": correlation_id or secrets.token_hex(8), "gateway": gateway,
                           "ts": int(time.time()) if ts is None else ts,
                           "nonce": nonce or secrets.token_urlsafe(18), "key_id": key_id,
                           "args": json.loads(json.dumps(DRILL if args is None else args))}
    if signer is not None:
        env["sig"] = base64.b64encode(signer(signed_message(sign_as or name, env))).decode()
    if edit is not None:
        edit(env)
    return json.dumps(env, ensure_ascii=False).encode()


# -- fixtures -----------------------------------------------------------------------------------------


class Keys:
    def __init__(self) -> None:
        self.ed = Ed25519PrivateKey.generate()
        self.ed_other = Ed25519PrivateKey.generate()
        self.sm2_private, self.sm2_public = sm2_keypair()
        self.sm2_other_private, self.sm2_other_public = sm2_keypair()


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


@pytest.fixture
def cfg(tmp_path: Path, keys: Keys) -> Config:
    sim = write_sim_config(tmp_path)
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "county-sm2.pub").write_text(keys.sm2_public + "\n")
    data = dict(sim.data)
    data["state_dir"] = str(tmp_path / "state")
    data["speech"] = {"max_chars": 100}
    data["county"] = {"max_skew_s": 300, "keys": [
        {"id": "county-ed", "type": "ed25519", "public_key": ed25519_pem(keys.ed)},
        {"id": "county-sm2", "type": "sm2", "public_key_file": "keys/county-sm2.pub"},
        {"id": "county-ops", "type": "ed25519", "commands": ["line_check", "rebirth"],
         "public_key": keys.ed_other.public_key().public_bytes_raw().hex()},
    ]}
    sim.path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return load_config(sim.path)


class Gateway:
    """A store, an engine (loop not started) and the county command handler, as the daemon wires them."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.store = Store.in_state_dir(cfg.state_dir)
        bus = EventBus()
        registry = DeviceRegistry(cfg, bus)
        hardware = Hardware.from_config(cfg, on_poll=registry.on_poll)  # never started
        speech = SpeechService(Path(cfg.state_dir) / "speech-cache", cfg.speech.rate_wpm,
                               cfg.speech.max_chars)
        self.engine = BroadcastEngine(cfg, hardware, self.store, speech, None, bus, registry)
        self.rebirths = 0
        self.line_checks: list[list[str] | None] = []
        self.county = self.handler()

    def handler(self, **kwargs: Any) -> CountyCommands:
        return CountyCommands(self.cfg, self.store, self.engine, rebirth=self.rebirth,
                              line_check=kwargs.pop("line_check", self.line_check), **kwargs)

    async def rebirth(self) -> None:
        self.rebirths += 1

    async def line_check(self, devices: list[str] | None) -> dict[str, Any]:
        self.line_checks.append(devices)
        ids = devices if devices is not None else [d.id for d in self.cfg.devices if d.id.startswith("rtu")]
        return {d: {"zones": {"1": {"ohm": 100.0, "verdict": "ok"}}} for d in ids}

    def refusals(self) -> list[dict[str, Any]]:
        return [a for a in self.store.list_audit() if a["action"] == "county.refused"]


@pytest.fixture
def gw(cfg: Config) -> Iterator[Gateway]:
    g = Gateway(cfg)
    yield g
    g.store.close()


def assert_refused(gw: Gateway, response: dict[str, Any], code: str, payload: bytes | None = None) -> None:
    assert response["ok"] is False, response
    assert response["error"] == code, response
    assert isinstance(response["message"], str) and response["message"]
    if payload is not None:
        try:
            expected = json.loads(payload).get("correlation_id")
        except ValueError:
            expected = None
        assert response["correlation_id"] == expected
    audit = gw.refusals()[0]
    assert audit["via"] == "county" and audit["details"]["error"] == code
    assert audit["details"]["correlation_id"] == response["correlation_id"]
    assert gw.store.list_broadcasts() == [], "nothing may be submitted"


# -- accepted ----------------------------------------------------------------------------------------


async def test_signed_broadcast_is_journalled_as_the_county(gw: Gateway, keys: Keys):
    payload = command("broadcast", ed25519_signer(keys.ed), args=EMERGENCY, correlation_id="c-0001")
    response = await gw.county.handle("broadcast", payload)
    assert response["ok"] is True, response
    assert response["correlation_id"] == "c-0001"
    record = gw.store.get_broadcast(response["broadcast_id"])
    assert record is not None and record["state"] is BroadcastState.WAITING
    assert record["actor"]["name"] == "county-ed" and record["actor"]["via"] == "county"
    assert record["request"]["source_level"] == 3  # county, by default
    assert record["request"]["title"] == "暴雨橙色预警"
    actions = {a["action"]: a for a in gw.store.list_audit()}
    submitted = actions["broadcast.submit"]
    assert submitted["actor"] == "county-ed" and submitted["via"] == "county"
    accepted = actions["county.command"]
    assert accepted["details"]["correlation_id"] == "c-0001" and accepted["details"]["verified"] is True
    assert accepted["details"]["broadcast_id"] == response["broadcast_id"]
    assert gw.county.counts() == {("broadcast", "ok"): 1}


async def test_source_level_can_be_given(gw: Gateway, keys: Keys):
    """The county relays province and national broadcasts: a given level is kept."""
    response = await gw.county.handle("broadcast", command(
        "broadcast", ed25519_signer(keys.ed), args={**EMERGENCY, "source_level": 6}))
    assert gw.store.get_broadcast(response["broadcast_id"])["request"]["source_level"] == 6


async def test_sm2_signed_command_is_accepted(gw: Gateway, keys: Keys):
    signer = sm2_signer(keys.sm2_private, keys.sm2_public)
    response = await gw.county.handle("broadcast", command("broadcast", signer, key_id="county-sm2"))
    assert response["ok"] is True, response
    assert gw.store.get_broadcast(response["broadcast_id"])["actor"]["name"] == "county-sm2"


async def test_sm2_der_signature_is_accepted(gw: Gateway, keys: Keys):
    """OpenSSL and most Chinese PKI write SM2 signatures as DER SEQUENCE { r, s }."""
    signer = sm2_signer(keys.sm2_private, keys.sm2_public, der=True)
    response = await gw.county.handle("rebirth", command("rebirth", signer, key_id="county-sm2", args={}))
    assert response["ok"] is True, response


async def test_sm2_signature_of_another_key_is_refused(gw: Gateway, keys: Keys):
    signer = sm2_signer(keys.sm2_other_private, keys.sm2_other_public)
    payload = command("broadcast", signer, key_id="county-sm2")
    assert_refused(gw, await gw.county.handle("broadcast", payload), "bad_signature", payload)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_sm2_interoperates_with_openssl(gw: Gateway, tmp_path: Path):
    """A key made and a command signed by OpenSSL (as in docs/county-commands.md) is accepted."""
    private, public = tmp_path / "county.key", tmp_path / "county.pub"
    made = subprocess.run(["openssl", "genpkey", "-algorithm", "SM2", "-out", str(private)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"this OpenSSL has no SM2: {made.stderr.strip()}")
    subprocess.run(["openssl", "pkey", "-in", str(private), "-pubout", "-out", str(public)], check=True)
    county = gw.cfg.county
    assert county is not None
    county.keys[1].public_key_file = str(public)  # absolute path, PEM
    handler = gw.handler()

    def openssl_sign(data: bytes) -> bytes:
        return subprocess.run(["openssl", "pkeyutl", "-sign", "-inkey", str(private), "-rawin",
                               "-digest", "sm3", "-pkeyopt", "distid:1234567812345678"],
                              input=data, capture_output=True, check=True).stdout

    response = await handler.handle("line_check", command(
        "line_check", openssl_sign, key_id="county-sm2", args={"devices": ["rtu1"]}))
    assert response["ok"] is True, response
    assert list(response["results"]) == ["rtu1"]


async def test_chinese_text_is_signed_as_utf8(gw: Gateway, keys: Keys):
    """ensure_ascii=False on both sides; the payload itself may use \\u escapes (same parsed text)."""
    env_bytes = command("broadcast", ed25519_signer(keys.ed), args=EMERGENCY)
    escaped = json.dumps(json.loads(env_bytes), ensure_ascii=True).encode()  # same document, \\u escapes
    assert escaped != env_bytes
    response = await gw.county.handle("broadcast", escaped)
    assert response["ok"] is True, response


# -- refused -----------------------------------------------------------------------------------------


def _drop(field: str) -> Callable[[dict[str, Any]], None]:
    return lambda env: env.pop(field)


def _set(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda env: env.__setitem__(field, value)


def _escalate(env: dict[str, Any]) -> None:
    env["args"].update({"class": "emergency", "severity": 1})


REFUSALS: dict[str, tuple[str, dict[str, Any]]] = {
    "unsigned": ("bad_request", {"edit": _drop("sig")}),
    "no nonce": ("bad_request", {"edit": _drop("nonce")}),
    "short nonce": ("bad_request", {"nonce": "abc"}),
    "unknown field": ("bad_request", {"edit": _set("priority", "max")}),
    "ts not a number": ("bad_request", {"ts": "2026-11-28T03:00:00Z"}),
    "ts is a boolean": ("bad_request", {"ts": True}),
    "ts absurdly large": ("bad_request", {"ts": 10**400}),
    "ts negative": ("bad_request", {"ts": -1}),
    "args not an object": ("bad_request", {"args": ["all"]}),
    "empty signature": ("bad_signature", {"edit": _set("sig", "")}),
    "signature not base64": ("bad_signature", {"edit": _set("sig", "not base64!")}),
    "signed by another key": ("bad_signature", {"other_key": True}),
    "tampered args": ("bad_signature", {"edit": _escalate}),
    "tampered ts": ("bad_signature", {"edit": lambda env: env.__setitem__("ts", env["ts"] + 1)}),
    "signed as another command": ("bad_signature", {"sign_as": "line_check"}),
    "wrong gateway": ("wrong_gateway", {"gateway": "gw-other"}),
    "gateway changed after signing": ("wrong_gateway", {"edit": _set("gateway", "gw-other")}),
    "unknown key": ("unknown_key", {"key_id": "county-old"}),
    "stale": ("stale", {"ts_offset": -302}),
    "from the future": ("from_future", {"ts_offset": 302}),
}


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_refused_audited_and_not_executed(gw: Gateway, keys: Keys, case: str):
    code, options = REFUSALS[case]
    options = dict(options)
    signer = ed25519_signer(keys.ed_other if options.pop("other_key", False) else keys.ed)
    if "ts_offset" in options:
        options["ts"] = int(time.time()) + options.pop("ts_offset")
    args = options.pop("args", None)
    payload = command("broadcast", signer, args=DRILL if args is None else args, **options)
    response = await gw.county.handle("broadcast", payload)
    assert_refused(gw, response, code, payload)
    audit = gw.refusals()[0]
    if code in ("bad_signature", "unknown_key", "wrong_gateway", "bad_request"):
        assert audit["actor"] == "unknown", "an unverified claim is not an identity"


@pytest.mark.parametrize("payload", [b"", b"not json", b"\xff\xfe", b"[1, 2]", b'{"correlation_id": NaN}',
                                     b"[" * 5000 + b"]" * 5000, b'{"a": 1, "a": 2}',
                                     b'{"ts": 1' + b"0" * 5000 + b"}"])
async def test_garbage_is_a_bad_request(gw: Gateway, payload: bytes):
    response = await gw.county.handle("broadcast", payload)
    assert_refused(gw, response, "bad_request")
    assert response["correlation_id"] is None


async def test_oversized_payload_is_not_parsed(gw: Gateway, keys: Keys):
    payload = command("broadcast", ed25519_signer(keys.ed), args={**DRILL, "text": "测" * 30000})
    response = await gw.county.handle("broadcast", payload)
    assert_refused(gw, response, "bad_request")
    assert response["correlation_id"] is None and "KiB" in response["message"]


async def test_duplicate_keys_are_refused_even_when_signed(gw: Gateway, keys: Keys):
    """A second "args" must not slip past a reader that takes the first one."""
    good = command("broadcast", ed25519_signer(keys.ed), correlation_id="dup-1")
    text = good.decode()
    payload = (text[:-1] + ', "args": ' + json.dumps(EMERGENCY, ensure_ascii=False) + "}").encode()
    response = await gw.county.handle("broadcast", payload)
    assert_refused(gw, response, "bad_request")
    assert "duplicate" in response["message"]


async def test_replayed_command_is_refused(gw: Gateway, keys: Keys):
    payload = command("broadcast", ed25519_signer(keys.ed))
    assert (await gw.county.handle("broadcast", payload))["ok"] is True
    response = await gw.county.handle("broadcast", payload)
    assert response["ok"] is False and response["error"] == "replayed"
    assert len(gw.store.list_broadcasts()) == 1
    assert gw.refusals()[0]["details"]["error"] == "replayed"
    assert gw.refusals()[0]["actor"] == "county-ed"


async def test_replay_is_refused_after_a_restart(cfg: Config, keys: Keys):
    payload = command("broadcast", ed25519_signer(keys.ed))
    first = Gateway(cfg)
    assert (await first.county.handle("broadcast", payload))["ok"] is True
    first.store.close()
    second = Gateway(cfg)  # same state file, new store, engine and handler
    try:
        response = await second.county.handle("broadcast", payload)
        assert response["error"] == "replayed"
        assert len(second.store.list_broadcasts()) == 1
    finally:
        second.store.close()


async def test_concurrent_deliveries_execute_once(gw: Gateway, keys: Keys):
    payload = command("broadcast", ed25519_signer(keys.ed))
    responses = await asyncio.gather(*(gw.county.handle("broadcast", payload) for _ in range(5)))
    assert sorted(r["ok"] for r in responses) == [False] * 4 + [True]
    assert len(gw.store.list_broadcasts()) == 1


async def test_a_retry_under_the_same_correlation_id_is_answered_not_executed(cfg: Config, keys: Keys):
    """The county re-sends a command whose answer was lost: fresh nonce, same correlation id."""
    sign = ed25519_signer(keys.ed)
    first_gw = Gateway(cfg)
    try:
        first = await first_gw.county.handle("broadcast", command("broadcast", sign, correlation_id="bc-1"))
        assert first["ok"] is True and "duplicate" not in first
        again = await first_gw.county.handle("broadcast", command("broadcast", sign, correlation_id="bc-1"))
        assert again == {**first, "duplicate": True}
        audit = first_gw.store.list_audit()[0]
        assert audit["action"] == "county.duplicate" and audit["actor"] == "county-ed"
        assert audit["details"]["verified"] is True and audit["details"]["duplicate"] is True
        assert first_gw.county.counts() == {("broadcast", "ok"): 1, ("broadcast", "duplicate"): 1}
    finally:
        first_gw.store.close()
    second_gw = Gateway(cfg)  # a restart: the answer is still there
    try:
        after = await second_gw.county.handle("broadcast", command("broadcast", sign, correlation_id="bc-1"))
        assert after == {**first, "duplicate": True}
        assert [b["id"] for b in second_gw.store.list_broadcasts()] == [first["broadcast_id"]]
        # another key's correlation ids are its own
        other = await second_gw.county.handle("broadcast", command(
            "broadcast", sm2_signer(keys.sm2_private, keys.sm2_public), key_id="county-sm2",
            correlation_id="bc-1"))
        assert other["ok"] is True and other["broadcast_id"] != first["broadcast_id"]
    finally:
        second_gw.store.close()


async def test_a_stored_answer_needs_a_valid_signature_and_fresh_ts(gw: Gateway, keys: Keys):
    sign = ed25519_signer(keys.ed)
    first = await gw.county.handle("broadcast", command("broadcast", sign, correlation_id="bc-1"))
    unsigned = await gw.county.handle("broadcast", command("broadcast", None, correlation_id="bc-1"))
    forged = await gw.county.handle("broadcast", command("broadcast", ed25519_signer(keys.ed_other),
                                                         correlation_id="bc-1"))
    stale = await gw.county.handle("broadcast", command("broadcast", sign, correlation_id="bc-1",
                                                        ts=int(time.time()) - 301))
    assert [r["error"] for r in (unsigned, forged, stale)] == ["bad_request", "bad_signature", "stale"]
    for refused in (unsigned, forged, stale):
        assert "broadcast_id" not in refused and "duplicate" not in refused
    assert [b["id"] for b in gw.store.list_broadcasts()] == [first["broadcast_id"]]


async def test_same_correlation_id_for_other_args_or_command_is_a_conflict(gw: Gateway, keys: Keys):
    sign = ed25519_signer(keys.ed)
    first = await gw.county.handle("broadcast", command("broadcast", sign, correlation_id="c-1"))
    payload = command("broadcast", sign, correlation_id="c-1", args={**DRILL, "text": "另一条"})
    other_args = await gw.county.handle("broadcast", payload)
    assert other_args["error"] == "conflict" and "other args" in other_args["message"]
    other_command = await gw.county.handle("cancel", command(
        "cancel", sign, correlation_id="c-1", args={"broadcast_id": first["broadcast_id"]}))
    assert other_command["error"] == "conflict" and "another command" in other_command["message"]
    assert len(gw.store.list_broadcasts()) == 1
    assert gw.store.get_broadcast(first["broadcast_id"])["state"] is BroadcastState.WAITING
    assert gw.refusals()[0]["details"]["error"] == "conflict"


async def test_a_refused_command_can_be_retried_under_its_correlation_id(gw: Gateway, keys: Keys):
    sign = ed25519_signer(keys.ed)
    bad = await gw.county.handle("broadcast", command("broadcast", sign, correlation_id="c-2",
                                                      args={**DRILL, "volume": 101}))
    assert bad["error"] == "bad_args"
    fixed = await gw.county.handle("broadcast", command("broadcast", sign, correlation_id="c-2"))
    assert fixed["ok"] is True and "duplicate" not in fixed


async def test_concurrent_retries_execute_once(gw: Gateway, keys: Keys):
    sign = ed25519_signer(keys.ed)
    responses = await asyncio.gather(*(gw.county.handle("broadcast", command(
        "broadcast", sign, correlation_id="c-3")) for _ in range(5)))
    assert all(r["ok"] for r in responses), responses
    assert len({r["broadcast_id"] for r in responses}) == 1
    assert sorted(bool(r.get("duplicate")) for r in responses) == [False] + [True] * 4
    assert len(gw.store.list_broadcasts()) == 1


async def test_a_cancel_retry_is_answered(gw: Gateway, keys: Keys):
    sign = ed25519_signer(keys.ed)
    bid = (await gw.county.handle("broadcast", command("broadcast", sign)))["broadcast_id"]
    cancel = await gw.county.handle("cancel", command("cancel", sign, args={"broadcast_id": bid},
                                                      correlation_id="cx"))
    retry = await gw.county.handle("cancel", command("cancel", sign, args={"broadcast_id": bid},
                                                     correlation_id="cx"))
    assert retry == {**cancel, "duplicate": True} and cancel["state"] == "cancelled"


async def test_a_command_cut_short_is_not_run_again(gw: Gateway, keys: Keys):
    """A failure half-way (after the journal? nobody knows): the retry is refused, never re-run."""
    class BrokenEngine:
        async def submit(self, request: BroadcastRequest, actor: Actor) -> str:
            raise RuntimeError("disk on fire")

    sign = ed25519_signer(keys.ed)
    broken = CountyCommands(gw.cfg, gw.store, BrokenEngine(), rebirth=gw.rebirth, line_check=None)
    assert (await broken.handle("broadcast", command("broadcast", sign, correlation_id="c-4")))[
        "error"] == "internal_error"
    retry = await gw.county.handle("broadcast", command("broadcast", sign, correlation_id="c-4"))
    assert retry["error"] == "interrupted" and "not executed again" in retry["message"]
    assert gw.store.list_broadcasts() == []


async def test_correlation_ids_are_forgotten_after_command_ttl(gw: Gateway, keys: Keys):
    now = [time.time()]
    county = gw.handler(clock=lambda: now[0])
    sign = ed25519_signer(keys.ed)
    first = await county.handle("broadcast", command("broadcast", sign, correlation_id="c-5", ts=int(now[0])))
    now[0] += 86400 + 1  # county.command_ttl_s, default a day
    later = await county.handle("broadcast", command("broadcast", sign, correlation_id="c-5", ts=int(now[0])))
    assert later["ok"] is True and later["broadcast_id"] != first["broadcast_id"]
    assert "duplicate" not in later


async def test_forged_message_cannot_burn_a_nonce(gw: Gateway, keys: Keys):
    """A badly signed message carrying a genuine command's nonce must not block that command."""
    nonce = secrets.token_hex(16)
    forged = command("broadcast", ed25519_signer(keys.ed_other), nonce=nonce)
    assert (await gw.county.handle("broadcast", forged))["error"] == "bad_signature"
    genuine = command("broadcast", ed25519_signer(keys.ed), nonce=nonce)
    assert (await gw.county.handle("broadcast", genuine))["ok"] is True


async def test_old_nonce_is_forgotten_but_its_command_is_stale(gw: Gateway, keys: Keys):
    now = [time.time()]
    county = gw.handler(clock=lambda: now[0])
    payload = command("rebirth", ed25519_signer(keys.ed), args={}, ts=int(now[0]))
    assert (await county.handle("rebirth", payload))["ok"] is True
    now[0] += 601  # past nonce_ttl (2 × 300 s): the nonce is pruned, the command is stale
    assert (await county.handle("rebirth", command("rebirth", ed25519_signer(keys.ed), args={},
                                                  ts=int(now[0]))))["ok"] is True
    assert (await county.handle("rebirth", payload))["error"] == "stale"
    assert gw.rebirths == 2


async def test_unknown_command_is_refused_after_the_signature(gw: Gateway, keys: Keys):
    payload = command("reboot", ed25519_signer(keys.ed), args={})
    assert_refused(gw, await gw.county.handle("reboot", payload), "unknown_command", payload)
    assert gw.refusals()[0]["actor"] == "county-ed"
    assert gw.county.counts() == {("other", "unknown_command"): 1}


async def test_key_limited_to_some_commands(gw: Gateway, keys: Keys):
    payload = command("broadcast", ed25519_signer(keys.ed_other), key_id="county-ops")
    assert_refused(gw, await gw.county.handle("broadcast", payload), "not_allowed", payload)
    ok = await gw.county.handle("rebirth", command("rebirth", ed25519_signer(keys.ed_other),
                                                   key_id="county-ops", args={}))
    assert ok["ok"] is True


@pytest.mark.parametrize(("args", "field"), [
    ({"class": "drill", "text": "x"}, "args.targets"),
    ({**DRILL, "targets": {"devices": ["nowhere"]}}, "args.targets"),
    ({**DRILL, "volume": 101}, "args.volume"),
    ({"class": "emergency", "targets": {"all": True}, "text": "x"}, "args"),
    ({**DRILL, "colour": "red"}, "args.colour"),
    ({**DRILL, "text": "长" * 101}, "args.text"),
])
async def test_bad_broadcast_args_name_the_field(gw: Gateway, keys: Keys, args: dict[str, Any], field: str):
    payload = command("broadcast", ed25519_signer(keys.ed), args=args)
    response = await gw.county.handle("broadcast", payload)
    assert_refused(gw, response, "bad_args", payload)
    assert response["field"] == field and response["message"].startswith(field)


# -- the other commands -----------------------------------------------------------------------------


async def test_cancel(gw: Gateway, keys: Keys):
    sign = ed25519_signer(keys.ed)
    submitted = await gw.county.handle("broadcast", command("broadcast", sign))
    bid = submitted["broadcast_id"]
    response = await gw.county.handle("cancel", command("cancel", sign, args={"broadcast_id": bid},
                                                        correlation_id="cancel-1"))
    assert response == {"correlation_id": "cancel-1", "ok": True, "broadcast_id": bid, "state": "cancelled"}
    record = gw.store.get_broadcast(bid)
    assert record["state"] is BroadcastState.CANCELLED and "county-ed" in record["reason"]
    again = await gw.county.handle("cancel", command("cancel", sign, args={"broadcast_id": bid}))
    assert again["error"] == "not_cancellable"
    missing = await gw.county.handle("cancel", command("cancel", sign, args={"broadcast_id": "nope"}))
    assert missing["error"] == "not_found"
    bad = await gw.county.handle("cancel", command("cancel", sign, args={}))
    assert bad["error"] == "bad_args" and bad["field"] == "args.broadcast_id"


async def test_commands_wait_for_start_and_end_at_stop(gw: Gateway, keys: Keys):
    """The daemon's reporter hears commands before the engine is up and after it stopped."""
    county = gw.handler(wait_for_start=True)
    early = await county.handle("rebirth", command("rebirth", ed25519_signer(keys.ed), args={},
                                                   correlation_id="early"))
    assert early["correlation_id"] == "early" and early["error"] == "unavailable"
    await county.start()
    assert (await county.handle("rebirth", command("rebirth", ed25519_signer(keys.ed), args={})))["ok"]
    await county.stop()
    late = await county.handle("rebirth", command("rebirth", ed25519_signer(keys.ed), args={}))
    assert late["error"] == "unavailable" and gw.rebirths == 1


async def test_rebirth(gw: Gateway, keys: Keys):
    response = await gw.county.handle("rebirth", command("rebirth", ed25519_signer(keys.ed), args={},
                                                         correlation_id="rb"))
    assert response == {"correlation_id": "rb", "ok": True}
    assert gw.rebirths == 1
    calls: list[str] = []
    sync = gw.handler()
    sync._rebirth = lambda: calls.append("x")  # a plain (non-async) callable is fine too
    assert (await sync.handle("rebirth", command("rebirth", ed25519_signer(keys.ed), args={})))["ok"]
    assert calls == ["x"]
    extra = await gw.county.handle("rebirth", command("rebirth", ed25519_signer(keys.ed), args={"now": 1}))
    assert extra["error"] == "bad_args" and extra["field"] == "args.now"


async def test_line_check(gw: Gateway, keys: Keys):
    sign = ed25519_signer(keys.ed)
    response = await gw.county.handle("line_check", command("line_check", sign, args={"devices": ["rtu2"]}))
    assert response["ok"] is True and response["results"] == {
        "rtu2": {"zones": {"1": {"ohm": 100.0, "verdict": "ok"}}}}
    every = await gw.county.handle("line_check", command("line_check", sign, args={"devices": None}))
    assert set(every["results"]) == {"rtu1", "rtu2", "rtu3"}
    assert gw.line_checks == [["rtu2"], None]
    unknown = await gw.county.handle("line_check", command("line_check", sign,
                                                           args={"devices": ["rtu1", "ghost"]}))
    assert unknown["error"] == "bad_args" and unknown["field"] == "args.devices.1"
    assert gw.line_checks == [["rtu2"], None]


async def test_line_check_unavailable_and_slow(gw: Gateway, keys: Keys):
    sign = ed25519_signer(keys.ed)
    none = gw.handler(line_check=None)
    assert (await none.handle("line_check", command("line_check", sign, args={})))["error"] == "unavailable"

    async def hangs(devices: list[str] | None) -> dict[str, Any]:
        await asyncio.sleep(10)
        return {}

    slow = gw.handler(line_check=hangs, line_check_timeout_s=0.05)
    assert (await slow.handle("line_check", command("line_check", sign, args={})))["error"] == "timeout"


async def test_failure_inside_a_command_is_answered_not_raised(gw: Gateway, keys: Keys):
    class BrokenEngine:
        async def submit(self, request: BroadcastRequest, actor: Actor) -> str:
            raise RuntimeError("disk on fire")

        async def cancel(self, broadcast_id: str, actor: Actor) -> bool:
            raise RuntimeError("disk on fire")

    county = CountyCommands(gw.cfg, gw.store, BrokenEngine(), rebirth=gw.rebirth, line_check=None)
    response = await county.handle("broadcast", command("broadcast", ed25519_signer(keys.ed),
                                                        correlation_id="boom"))
    assert response["correlation_id"] == "boom" and response["error"] == "internal_error"
    assert "disk on fire" not in response["message"]


async def test_no_county_section_refuses_everything(tmp_path: Path, keys: Keys):
    sim = write_sim_config(tmp_path)
    data = {**sim.data, "state_dir": str(tmp_path / "state")}
    sim.path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    gw = Gateway(load_config(sim.path))
    try:
        response = await gw.county.handle("broadcast", command("broadcast", ed25519_signer(keys.ed)))
        assert response["error"] == "unknown_key" and "no county keys" in response["message"]
    finally:
        gw.store.close()


# -- keys and configuration ---------------------------------------------------------------------------


def test_key_forms(keys: Keys):
    raw = keys.ed.public_key().public_bytes_raw()
    for text in (ed25519_pem(keys.ed), raw.hex(), base64.b64encode(raw).decode()):
        key = load_public_key("ed25519", text)
        assert key.verify(keys.ed.sign(b"m"), b"m") and not key.verify(keys.ed.sign(b"m"), b"n")
    point = bytes.fromhex(keys.sm2_public)
    sign = sm2_signer(keys.sm2_private, keys.sm2_public)
    for text in (point.hex(), "04" + point.hex(), base64.b64encode(b"\x04" + point).decode(),
                 base64.b64encode(point).decode()):
        key = load_public_key("sm2", text)
        assert key.verify(sign(b"m"), b"m") and not key.verify(sign(b"m"), b"n")


def test_sm2_key_starting_with_04_digits():
    """gmssl strips a leading "04" with lstrip, eating the key's own 0/4 digits; we must not."""
    private, public = sm2_keypair(11)  # 11·G happens to start with 0x04
    assert public.startswith("04")
    key = load_public_key("sm2", public)
    assert key.verify(sm2_signer(private, public)(b"m"), b"m")


def test_sm2_signature_values_out_of_range_are_refused(keys: Keys):
    key = load_public_key("sm2", keys.sm2_public)
    good = sm2_signer(keys.sm2_private, keys.sm2_public)(b"m")
    r = good[:32]
    for s in (0, N, N + int.from_bytes(good[32:], "big")):
        assert not key.verify(r + (s % 2**256).to_bytes(32, "big"), b"m")
    assert not key.verify(bytes(64), b"m")
    assert not key.verify(b"\x30\x00", b"m")


@pytest.mark.parametrize(("key_type", "text", "problem"), [
    ("ed25519", "abcd", "raw key must be 32 bytes"),
    ("sm2", "00" * 64, "not a point on the SM2 curve"),
    ("sm2", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----", "never the private one"),
    ("ed25519", "-----BEGIN PUBLIC KEY-----\n!!!\n-----END PUBLIC KEY-----", "not valid base64"),
])
def test_bad_keys_are_explained(key_type: Any, text: str, problem: str):
    with pytest.raises(KeyFormatError, match=problem):
        load_public_key(key_type, text)


def test_sm2_pem_must_be_sm2(keys: Keys):
    with pytest.raises(KeyFormatError, match="not an SM2 public key"):
        load_public_key("sm2", ed25519_pem(keys.ed))
    with pytest.raises(KeyFormatError, match="expected an Ed25519 key"):
        p256 = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        load_public_key("ed25519", p256)


def test_config_checks_county_settings(cfg: Config, tmp_path: Path):
    assert cfg.county is not None and cfg.county.nonce_ttl == 600
    with pytest.raises(ValidationError, match="at least 2 × max_skew_s"):
        CountySettings.model_validate({"max_skew_s": 300, "nonce_ttl_s": 500, "keys": [
            {"id": "k", "type": "ed25519", "public_key": "00" * 32}]})
    with pytest.raises(ValidationError, match="command_ttl_s must be at least nonce_ttl_s"):
        CountySettings.model_validate({"max_skew_s": 300, "command_ttl_s": 599, "keys": [
            {"id": "k", "type": "ed25519", "public_key": "00" * 32}]})
    with pytest.raises(ValidationError, match="exactly one of public_key and public_key_file"):
        CountySettings.model_validate({"keys": [{"id": "k", "type": "ed25519"}]})
    with pytest.raises(ValidationError, match="duplicate key id"):
        CountySettings.model_validate({"keys": [{"id": "k", "type": "sm2", "public_key_file": "a"},
                                                {"id": "k", "type": "sm2", "public_key_file": "b"}]})
    path = cfg.path
    assert path is not None
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["county"]["keys"][0]["public_key"] = "not a key"
    data["county"]["keys"][1]["public_key_file"] = "keys/missing.pub"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "county.keys[0](county-ed).public_key:" in text
    assert "county.keys[1](county-sm2).public_key_file: cannot read keys/missing.pub" in text


# -- docs/county-commands.md stays true ---------------------------------------------------------------

DOC = Path(__file__).resolve().parent.parent / "docs" / "county-commands.md"


def doc_block(marker: str | None = None, language: str = "") -> str:
    """The first fenced block after ``<!-- marker -->`` (or the first ``language`` block)."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"<!-- {marker} -->") if marker else 0
    fence = text.index(f"```{language}", start)
    body_start = text.index("\n", fence) + 1
    return text[body_start:text.index("\n```", body_start)]


def docs_gateway(tmp_path: Path, sm2_public: str) -> Gateway:
    """A gateway configured with the docs' own ``county:`` example (gateway id as in the example)."""
    tmp_path.mkdir(exist_ok=True)
    sim = write_sim_config(tmp_path)
    text = DOC.read_text(encoding="utf-8")
    yaml_start = text.index("```yaml\ncounty:")
    county = yaml.safe_load(text[text.index("\n", yaml_start) + 1:text.index("\n```", yaml_start)])["county"]
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "county-sm2-2026.pub").write_text(sm2_public)
    data = {**sim.data, "state_dir": str(tmp_path / "state"), "county": county,
            "gateway": {**sim.data["gateway"], "id": "gw-340621105"}}
    sim.path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return Gateway(load_config(sim.path))


async def test_docs_worked_example_verifies(tmp_path: Path, keys: Keys):
    gw = docs_gateway(tmp_path, keys.sm2_public)
    try:
        envelope_text = doc_block("worked-example: envelope")
        envelope = json.loads(envelope_text)
        assert signed_bytes("broadcast", envelope) == doc_block("worked-example: signed-bytes").encode()
        county = gw.handler(clock=lambda: envelope["ts"] + 5)
        response = await county.handle("broadcast", envelope_text.encode())
        assert response["ok"] is True, response
        assert response["correlation_id"] == "20261128-031500-0001"
        late = gw.handler()  # today's clock: the example is long stale
        assert (await late.handle("broadcast", envelope_text.encode()))["error"] in ("replayed", "stale")
    finally:
        gw.store.close()


async def test_docs_snippet_signs_what_the_gateway_accepts(tmp_path: Path, keys: Keys):
    snippet = doc_block("signing-snippet", "python")
    namespace: dict[str, Any] = {"__name__": "sign_command"}
    exec(compile(snippet, "sign_command.py", "exec"), namespace)
    gw = docs_gateway(tmp_path, keys.sm2_public)
    try:
        ed = namespace["make_command"]("rebirth", "gw-340621105", "county-2026a", {},
                                       namespace["ed25519_signer"](Ed25519PrivateKey.from_private_bytes(
                                           bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc4"
                                                         "4449c5697b326919703bac031cae7f60"))))
        assert (await gw.county.handle("rebirth", ed))["ok"] is True
        assert namespace["sm2_public_point"](keys.sm2_private) == keys.sm2_public
        sm = namespace["make_command"]("broadcast", "gw-340621105", "county-sm2-2026", DRILL,
                                       namespace["sm2_signer"](keys.sm2_private), correlation_id="sm-1")
        response = await gw.county.handle("broadcast", sm)
        assert response["ok"] is True and response["correlation_id"] == "sm-1", response
    finally:
        gw.store.close()


async def test_docs_snippet_command_line(tmp_path: Path):
    script = tmp_path / "sign_command.py"
    script.write_text(doc_block("signing-snippet", "python"), encoding="utf-8")
    subprocess.run([sys.executable, str(script), "keygen-sm2", "county"], cwd=tmp_path, check=True)
    assert (tmp_path / "county.key").stat().st_mode & 0o077 == 0
    public = (tmp_path / "county.pub").read_text().strip()
    out = subprocess.run([sys.executable, str(script), "sign", "--type", "sm2", "--key", "county.key",
                          "--key-id", "county-sm2-2026", "--gateway", "gw-340621105", "line_check",
                          '{"devices": ["rtu1"]}'], cwd=tmp_path, check=True, capture_output=True).stdout
    gw = docs_gateway(tmp_path / "gw", public)
    try:
        response = await gw.county.handle("line_check", out.strip())
        assert response["ok"] is True and list(response["results"]) == ["rtu1"], response
    finally:
        gw.store.close()
