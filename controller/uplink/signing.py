"""Signatures on county commands: the exact bytes that are signed, the county's public keys, checks.

A command is authentic only if its signature verifies over
``b"ebc-cmd-v1\\n" + name + b"\\n" + canonical_json(envelope without "sig")``. The context string
versions the scheme; the command name (from the topic) and the envelope's gateway id are inside
the signed bytes, so a captured signature cannot be replayed as another command or on another
gateway. The canonical form is recomputed from the *parsed* envelope, so what is verified is
exactly what is executed (no second reading of the raw bytes that could disagree).

Two key types: Ed25519 (``cryptography``) and SM2 with SM3 as the national scheme uses it (国密,
GM/T 0003 / 0009: the standard user id ``1234567812345678``), via the pure-Python ``gmssl``.
The gateway holds public keys only — there is no secret here whose comparison could leak through
timing; verification itself is done by the libraries.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any, Literal, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from gmssl import sm2

KeyType = Literal["ed25519", "sm2"]

CONTEXT = b"ebc-cmd-v1\n"

SM2_USER_ID = "1234567812345678"
"""The default signer id (GM/T 0009) that gmssl's ``sign_with_sm3``/``verify_with_sm3`` hash into Z."""

_CURVE = sm2.default_ecc_table
_P = int(_CURVE["p"], 16)
_A = int(_CURVE["a"], 16)
_B = int(_CURVE["b"], 16)
_N = int(_CURVE["n"], 16)

# DER is canonical, so every SubjectPublicKeyInfo of an uncompressed SM2 point starts with exactly
# these bytes: SEQUENCE { SEQUENCE { id-ecPublicKey, sm2p256v1 (1.2.156.10197.1.301) }, BIT STRING }.
_SM2_SPKI_PREFIX = bytes.fromhex("3059301306072a8648ce3d020106082a811ccf5501822d034200")
_PEM = re.compile(r"-----BEGIN ([A-Z ]+)-----(.*?)-----END \1-----", re.S)


class KeyFormatError(ValueError):
    """A configured public key cannot be used; the message says what is wrong with it."""


class PublicKey(Protocol):
    """A county public key that can check a signature."""

    type: KeyType

    def verify(self, signature: bytes, message: bytes) -> bool:
        """True only if ``signature`` is valid for ``message``; never raises on bad input."""
        ...


def canonical_json(obj: Any) -> bytes:
    """The one serialisation both sides sign: sorted keys, no spaces, UTF-8 (not \\u escapes)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def signed_bytes(name: str, envelope: Mapping[str, Any]) -> bytes:
    """What the signature covers: context, command name, canonical envelope without ``sig``."""
    body = {k: v for k, v in envelope.items() if k != "sig"}
    return CONTEXT + name.encode("utf-8") + b"\n" + canonical_json(body)


class Ed25519Key:
    """An Ed25519 public key (RFC 8032, as ``cryptography`` implements it)."""

    type: KeyType = "ed25519"

    def __init__(self, key: Ed25519PublicKey) -> None:
        self._key = key

    def verify(self, signature: bytes, message: bytes) -> bool:
        try:
            self._key.verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True


class Sm2Key:
    """An SM2 public key; signatures are SM2 over SM3(Z ‖ message) with the standard user id."""

    type: KeyType = "sm2"

    def __init__(self, point: bytes) -> None:
        """``point``: the 64-byte x ‖ y of a point on the SM2 curve (checked)."""
        if len(point) != 64:
            raise KeyFormatError("an SM2 public key is a 64-byte point x‖y (65 with the leading 04)")
        x, y = int.from_bytes(point[:32], "big"), int.from_bytes(point[32:], "big")
        if not (0 < x < _P and 0 < y < _P) or (y * y - (x * x * x + _A * x + _B)) % _P:
            raise KeyFormatError("not a point on the SM2 curve (wrong key type or damaged key?)")
        self._hex = point.hex()

    @property
    def point(self) -> bytes:
        """The checked 64-byte x ‖ y (controller/uplink/national/signature.py hashes it into Z)."""
        return bytes.fromhex(self._hex)

    def verify(self, signature: bytes, message: bytes) -> bool:
        rs = _sm2_rs(signature)
        if rs is None:
            return False
        r, s = rs
        if not (0 < r < _N and 0 < s < _N):  # gmssl does not range-check r and s itself
            return False
        crypt = sm2.CryptSM2(private_key=None, public_key=self._hex)
        # gmssl strips a leading "04" with str.lstrip("04"), which also eats the key's own leading
        # 0/4 digits: set the checked 128-hex-digit key directly.
        crypt.public_key = self._hex
        try:
            return bool(crypt.verify_with_sm3(f"{r:064x}{s:064x}", message))
        except (TypeError, ValueError):  # degenerate points surface as None inside gmssl
            return False


def _sm2_rs(signature: bytes) -> tuple[int, int] | None:
    """(r, s) from a 64-byte r‖s signature or a DER SEQUENCE { r, s } (what OpenSSL writes)."""
    if len(signature) == 64:
        return int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    try:
        return decode_dss_signature(signature)
    except ValueError:
        return None


def load_public_key(key_type: KeyType, text: str) -> PublicKey:
    """A public key from PEM (SubjectPublicKeyInfo) or the raw key in hex or base64.

    Raw forms: Ed25519 — the 32-byte key; SM2 — the 64-byte point x‖y or 65 bytes 04‖x‖y.
    Raises KeyFormatError saying what is wrong.
    """
    text = text.strip()
    pem = _PEM.search(text)
    if pem is not None:
        if pem.group(1) != "PUBLIC KEY":
            raise KeyFormatError(f"expected a PEM 'PUBLIC KEY' block, found '{pem.group(1)}' "
                                 f"(give the public key, never the private one)")
        try:
            der = base64.b64decode("".join(pem.group(2).split()), validate=True)
        except binascii.Error:
            raise KeyFormatError("the PEM block is not valid base64") from None
        return _from_der(key_type, der)
    if "PRIVATE" in text.upper():
        raise KeyFormatError("this looks like a private key; the gateway needs the public key only")
    raw = _raw_bytes(text, {"ed25519": (32,), "sm2": (64, 65)}[key_type])
    if key_type == "ed25519":
        return Ed25519Key(Ed25519PublicKey.from_public_bytes(raw))
    return Sm2Key(raw[1:] if len(raw) == 65 else raw)


def _from_der(key_type: KeyType, der: bytes) -> PublicKey:
    if key_type == "sm2":
        if len(der) != len(_SM2_SPKI_PREFIX) + 65 or not der.startswith(_SM2_SPKI_PREFIX) \
                or der[len(_SM2_SPKI_PREFIX)] != 0x04:
            raise KeyFormatError("not an SM2 public key with an uncompressed point (curve OID "
                                 "1.2.156.10197.1.301)")
        return Sm2Key(der[len(_SM2_SPKI_PREFIX) + 1:])
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, TypeError) as exc:
        raise KeyFormatError(f"not a readable public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFormatError(f"expected an Ed25519 key, found {type(key).__name__}")
    return Ed25519Key(key)


def _raw_bytes(text: str, sizes: tuple[int, ...]) -> bytes:
    """Hex when it has the hex length of an allowed size, else strict base64."""
    compact = "".join(text.split())
    if len(compact) in {2 * n for n in sizes} and re.fullmatch(r"[0-9a-fA-F]+", compact):
        return bytes.fromhex(compact)
    try:
        raw = base64.b64decode(compact, validate=True)
    except binascii.Error:
        raw = b""
    if len(raw) not in sizes:
        wanted = " or ".join(f"{n} bytes ({2 * n} hex digits)" for n in sizes)
        raise KeyFormatError(f"a raw key must be {wanted}, in hex or base64; or give a PEM public key")
    return raw
