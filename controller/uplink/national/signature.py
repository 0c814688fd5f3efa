"""Signatures of the national platform interface: SM2 over SM3 of the EBDB bytes, and the EBDS file.

An EBD tar carries ``EBDS_EBDB_<EBDID>.xml``, a signature over the *raw bytes* of the EBDB file. In
the field a crypto card signs; here :class:`Signer` is the seam for that and
:class:`SoftwareSm2Signer` the software stand-in (the platform stand-in, tests, a site without a
card). What is publicly unknown is configurable rather than guessed (docs: NATIONAL-PLATFORM.md,
"Signature"): the SM2 user id (GM/T 0009 default ``1234567812345678``), the value's encoding (r‖s
or DER; base64 or hex) and the file's form (the newer one that passed conformance, or the older
one with ``SignatureCert``). Reading accepts all of them.

The scheme (GM/T 0003.2): Z = SM3(ENTL ‖ ID ‖ a ‖ b ‖ xG ‖ yG ‖ xA ‖ yA) with ENTL the bit length
of ID in two bytes, e = SM3(Z ‖ M), and (r, s) the SM2 signature of e. gmssl's own
``sign_with_sm3`` hard-codes the default id, so Z and e are computed here and only the curve
arithmetic (``CryptSM2.sign``/``verify`` on e, ``_kg`` for a public key) is gmssl's. gmssl is pure
Python and not constant-time: fine for verifying and for the software stand-in, which is why the
field signer is a card. SM3 itself comes from OpenSSL (hashlib) when it has it — gmssl's SM3 needs
about 10 s for a 1 MiB EBDB.

Private keys (software signer): 64 hex digits, or PEM ``PRIVATE KEY`` (PKCS#8), ``EC PRIVATE KEY``
or ``SM2 PRIVATE KEY`` (SEC1, what ``openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:SM2``
and ``openssl ec`` write) on the SM2 curve, unencrypted. ``cryptography`` refuses the SM2 curve, so
that DER is read here, minimally. Public keys: whatever controller/uplink/signing.py
``load_public_key("sm2", …)`` accepts (PEM, or the point in hex/base64), with its on-curve check.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import re
import secrets
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol
from zoneinfo import ZoneInfo

import defusedxml.ElementTree as DET
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from defusedxml import DefusedXmlException
from gmssl import func, sm2, sm3

from controller.uplink.national.codes import EBDID_RE
from controller.uplink.signing import KeyFormatError, Sm2Key, load_public_key

DEFAULT_USER_ID = "1234567812345678"

SignatureForm = Literal["new", "old"]
ValueEncoding = Literal["rs", "der"]
TextEncoding = Literal["base64", "hex"]

_CURVE = sm2.default_ecc_table
_N = int(_CURVE["n"], 16)
_CURVE_BYTES = bytes.fromhex(_CURVE["a"] + _CURVE["b"] + _CURVE["g"])  # a ‖ b ‖ xG ‖ yG, as hashed into Z
_MAX_USER_ID_BYTES = 0xFFFF // 8  # ENTL is the id's length in bits, in two bytes

_OID_EC_PUBLIC_KEY = bytes.fromhex("2a8648ce3d0201")  # 1.2.840.10045.2.1
_OID_SM2 = bytes.fromhex("2a811ccf5501822d")  # 1.2.156.10197.1.301
_PEM = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.S)
_HEX = re.compile(r"[0-9a-fA-F]+")
_SIGNATURE_ALGORITHMS = {"SM2-SM3", "SM2", "SM3WITHSM2", "SM2WITHSM3"}
_ZONE = ZoneInfo("Asia/Shanghai")


class SignatureError(ValueError):
    """A signature file cannot be read; the message names the element that is wrong."""


class Signer(Protocol):
    """Whatever signs EBDBs: the software key here, a crypto card later."""

    cert_sn: str

    def sign(self, data: bytes) -> bytes:
        """The raw 64-byte r‖s: SM2 over SM3(Z ‖ data)."""
        ...


# -- SM3, Z, e --------------------------------------------------------------------------------------


def _sm3(data: bytes) -> bytes:
    try:
        return hashlib.new("sm3", data).digest()
    except ValueError:  # an OpenSSL without SM3
        return bytes.fromhex(sm3.sm3_hash(func.bytes_to_list(data)))


def _user_id(user_id: str) -> bytes:
    raw = user_id.encode("utf-8")
    if len(raw) > _MAX_USER_ID_BYTES:
        raise ValueError(f"the SM2 user id is {len(raw)} bytes; at most {_MAX_USER_ID_BYTES} fit in ENTL")
    return raw


def _z(user_id: bytes, point: bytes) -> bytes:
    """Z = SM3(ENTL ‖ ID ‖ a ‖ b ‖ xG ‖ yG ‖ xA ‖ yA) (GM/T 0003.2 §5.5)."""
    return _sm3((len(user_id) * 8).to_bytes(2, "big") + user_id + _CURVE_BYTES + point)


def _new_crypt(private_hex: str | None, point: bytes) -> sm2.CryptSM2:
    crypt = sm2.CryptSM2(private_key=private_hex, public_key="")
    # gmssl strips a leading "04" with str.lstrip("04"), which also eats the key's own leading 0/4
    # digits: set the 128-hex-digit point directly.
    crypt.public_key = point.hex()
    return crypt


def _public_point(d: int) -> bytes:
    point = _new_crypt(None, b"")._kg(d, _CURVE["g"])
    if point is None:  # only for d ≡ 0 (mod n), which the range check excludes
        raise KeyFormatError("the private key does not give a public key")
    return bytes.fromhex(point)


def generate_keypair() -> tuple[str, str]:
    """A new SM2 key pair from ``secrets``: (private 64 hex digits, public point x‖y 128 hex digits)."""
    d = secrets.randbelow(_N - 2) + 1  # 1 ≤ d ≤ n − 2: d = n − 1 has no (1 + d)⁻¹ mod n
    return f"{d:064x}", _public_point(d).hex()


# -- private keys -----------------------------------------------------------------------------------


def _der(buf: bytes, pos: int = 0) -> tuple[int, bytes, int]:
    """(tag, content, end) of the DER element at ``pos``; definite lengths only, bounds checked."""
    if pos + 2 > len(buf):
        raise KeyFormatError("the private key's DER is truncated")
    tag, length = buf[pos], buf[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4 or pos + count > len(buf):
            raise KeyFormatError("the private key's DER has a bad length")
        length = int.from_bytes(buf[pos:pos + count], "big")
        pos += count
    if pos + length > len(buf):
        raise KeyFormatError("the private key's DER is truncated")
    return tag, buf[pos:pos + length], pos + length


def _der_items(content: bytes) -> list[tuple[int, bytes]]:
    items, pos = [], 0
    while pos < len(content):
        tag, body, pos = _der(content, pos)
        items.append((tag, body))
    return items


def _der_sequence(der: bytes, what: str) -> list[tuple[int, bytes]]:
    tag, body, end = _der(der)
    if tag != 0x30 or end != len(der):
        raise KeyFormatError(f"not {what} (expected one DER SEQUENCE)")
    return _der_items(body)


def _oid_text(oid: bytes) -> str:
    if not oid:
        return "(empty)"
    parts, value = [oid[0] // 40, oid[0] % 40], 0
    for byte in oid[1:]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(value)
            value = 0
    return ".".join(map(str, parts))


def _check_curve(tag: int, oid: bytes) -> None:
    if tag != 0x06:
        raise KeyFormatError("the private key's curve parameters are explicit, not the SM2 curve OID")
    if oid != _OID_SM2:
        raise KeyFormatError(f"the private key is on curve {_oid_text(oid)}, not SM2 (1.2.156.10197.1.301)")


def _sec1(der: bytes) -> tuple[int, bytes | None]:
    """(d, public point or None) from an ECPrivateKey (RFC 5915)."""
    items = _der_sequence(der, "an EC private key")
    if len(items) < 2 or items[0] != (0x02, b"\x01") or items[1][0] != 0x04:
        raise KeyFormatError("not an EC private key (RFC 5915 ECPrivateKey version 1)")
    point = None
    for tag, body in items[2:]:
        if tag == 0xA0:  # [0] ECParameters
            _check_curve(*_der(body)[:2])
        elif tag == 0xA1:  # [1] publicKey BIT STRING: 00 (unused bits) 04 x y
            bit_tag, bits, _ = _der(body)
            if bit_tag == 0x03 and len(bits) == 66 and bits[:2] == b"\x00\x04":
                point = bits[2:]
    return int.from_bytes(items[1][1], "big"), point


def _pkcs8(der: bytes) -> tuple[int, bytes | None]:
    items = _der_sequence(der, "a PKCS#8 private key")
    if len(items) < 3 or items[0][0] != 0x02 or items[1][0] != 0x30 or items[2][0] != 0x04:
        raise KeyFormatError("not a PKCS#8 private key (version, algorithm, key)")
    algorithm = _der_items(items[1][1])
    if not algorithm or algorithm[0][0] != 0x06:
        raise KeyFormatError("the PKCS#8 key has no algorithm OID")
    oid = algorithm[0][1]
    if oid == _OID_EC_PUBLIC_KEY:
        if len(algorithm) < 2:
            raise KeyFormatError("the PKCS#8 EC key does not name its curve (SM2 expected)")
        _check_curve(*algorithm[1])
    elif oid != _OID_SM2:
        raise KeyFormatError(f"the PKCS#8 key is not an EC/SM2 key (algorithm {_oid_text(oid)})")
    return _sec1(items[2][1])


def _private_scalar(text: str) -> int:
    """d from 64 hex digits or an unencrypted PEM private key on the SM2 curve; checked."""
    text = text.strip()
    pem = _PEM.search(text)
    point = None
    if pem is not None:
        label, body = pem.group(1), pem.group(2)
        if "ENCRYPTED" in label or "ENCRYPTED" in body:
            raise KeyFormatError("the PEM private key is encrypted; store it unencrypted "
                                 "(openssl pkey -in key.pem -out plain.pem), readable by the gateway only")
        if label not in {"PRIVATE KEY", "EC PRIVATE KEY", "SM2 PRIVATE KEY"}:
            raise KeyFormatError(f"expected a PEM 'PRIVATE KEY', 'EC PRIVATE KEY' or 'SM2 PRIVATE KEY' "
                                 f"block, found '{label}'")
        try:
            der = base64.b64decode("".join(body.split()), validate=True)
        except binascii.Error:
            raise KeyFormatError("the PEM block is not valid base64") from None
        d, point = _pkcs8(der) if label == "PRIVATE KEY" else _sec1(der)
    else:
        compact = "".join(text.split())
        if len(compact) != 64 or not _HEX.fullmatch(compact):
            raise KeyFormatError("an SM2 private key is 64 hex digits, or a PEM 'PRIVATE KEY' / "
                                 "'EC PRIVATE KEY' on the SM2 curve")
        d = int(compact, 16)
    if not 1 <= d <= _N - 2:
        raise KeyFormatError("the SM2 private key is out of range (1 … n − 2)")
    if point is not None and point != _public_point(d):
        raise KeyFormatError("the public key inside the PEM does not belong to its private key")
    return d


# -- signing and verifying --------------------------------------------------------------------------


class SoftwareSm2Signer:
    """SM2 signing with a key held in memory (the stand-in for a crypto card)."""

    def __init__(self, private_key: str, cert_sn: str, user_id: str = DEFAULT_USER_ID) -> None:
        d = _private_scalar(private_key)
        self._point = _public_point(d)
        self._crypt = _new_crypt(f"{d:064x}", self._point)
        self._z = _z(_user_id(user_id), self._point)
        self.cert_sn = cert_sn
        self.user_id = user_id

    def __repr__(self) -> str:  # never the key
        return f"SoftwareSm2Signer(cert_sn={self.cert_sn!r}, public_key={self.public_key_hex[:16]}…)"

    @property
    def public_key_hex(self) -> str:
        """The public point x‖y, 128 hex digits (what the upper platform is given)."""
        return self._point.hex()

    def sign(self, data: bytes) -> bytes:
        """The raw 64-byte r‖s of SM2 over e = SM3(Z ‖ data), with a fresh ``secrets`` nonce."""
        e = _sm3(self._z + data)
        while True:  # gmssl returns None for the (negligibly rare) r = 0, r + k = n or s = 0: new k
            k = secrets.randbelow(_N - 1) + 1
            signature = self._crypt.sign(e, f"{k:064x}")
            if signature:
                return bytes.fromhex(signature)


def _rs_candidates(signature: bytes) -> list[tuple[int, int]]:
    """(r, s) readings of a signature: 64-byte r‖s, and DER (a 64-byte DER is possible, if rare)."""
    found = []
    if len(signature) == 64:
        found.append((int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")))
    with contextlib.suppress(ValueError):
        found.append(decode_dss_signature(bytes(signature)))
    return found


class Sm2Verifier:
    """Checks SM2-over-SM3 signatures of one public key under one user id."""

    def __init__(self, public_key: str, user_id: str = DEFAULT_USER_ID) -> None:
        key = load_public_key("sm2", public_key)
        if not isinstance(key, Sm2Key):  # load_public_key("sm2", ...) returns one; for the type checker
            raise KeyFormatError("not an SM2 public key")
        self._point = key.point
        self._z = _z(_user_id(user_id), self._point)
        self.user_id = user_id

    @property
    def public_key_hex(self) -> str:
        return self._point.hex()

    def verify(self, signature: bytes, data: bytes) -> bool:
        """True only if ``signature`` (r‖s or DER) is valid for ``data``; never raises on bad input."""
        try:
            e = _sm3(self._z + bytes(data))
            for r, s in _rs_candidates(bytes(signature)):
                if not (0 < r < _N and 0 < s < _N):  # gmssl does not range-check r and s
                    continue
                if _new_crypt(None, self._point).verify(f"{r:064x}{s:064x}", e):
                    return True
        except (TypeError, ValueError):  # not bytes; degenerate points surface as None inside gmssl
            return False
        return False


# -- the EBDS file ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignatureFile:
    form: SignatureForm
    ebdid: str | None
    """``RelatedEBD/EBDID``: the caller checks it names the package's EBDID."""
    cert_sn: str
    value: bytes
    """Decoded from base64/hex, as written: 64-byte r‖s or DER (:meth:`Sm2Verifier.verify` takes both)."""


def build_signature_file(ebdid: str, signer: Signer, ebdb: bytes, *, form: SignatureForm = "new",
                         value_encoding: ValueEncoding = "rs", text_encoding: TextEncoding = "base64",
                         cert_type: str = "", issuer_id: str = "", time: datetime | None = None) -> bytes:
    """``EBDS_EBDB_<ebdid>.xml``: the signature of the raw ``ebdb`` bytes, in the configured form.

    ``cert_type``, ``issuer_id`` and ``time`` (``SignatureTime``, default now, Beijing time) are
    written in the old form only; their values are not public, hence configurable.
    """
    if not EBDID_RE.fullmatch(ebdid):
        raise ValueError(f"EBDID '{ebdid}' must be 41 digits")
    raw = signer.sign(ebdb)
    if len(raw) != 64:
        raise SignatureError(f"the signer returned {len(raw)} bytes, not a 64-byte r‖s")
    if value_encoding == "der":
        raw = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    text = base64.b64encode(raw).decode("ascii") if text_encoding == "base64" else raw.hex()

    root = ET.Element("Signature")
    ET.SubElement(root, "Version").text = "1"
    ET.SubElement(ET.SubElement(root, "RelatedEBD"), "EBDID").text = ebdid
    if form == "new":
        ET.SubElement(root, "CertSN").text = signer.cert_sn
        ET.SubElement(root, "SignatureAlgorithm").text = "SM2-SM3"
    else:
        cert = ET.SubElement(root, "SignatureCert")
        ET.SubElement(cert, "CertType").text = cert_type
        ET.SubElement(cert, "IssuerID").text = issuer_id
        ET.SubElement(cert, "CertSN").text = signer.cert_sn
        when = (time or datetime.now(_ZONE)).astimezone(_ZONE)
        ET.SubElement(root, "SignatureTime").text = when.strftime("%Y-%m-%d %H:%M:%S")
        ET.SubElement(root, "DigestAlgorithm").text = "SM3"
        ET.SubElement(root, "SignatureAlgorithm").text = "SM2"
    ET.SubElement(root, "SignatureValue").text = text
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode").encode("utf-8")


def _local(tag: object) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _optional(parent: ET.Element, name: str, path: str) -> ET.Element | None:
    """The one child called ``name`` (any namespace) or None; a repeated element is refused, not guessed."""
    found = [el for el in parent if _local(el.tag) == name]
    if len(found) > 1:
        raise SignatureError(f"{path}/{name} appears {len(found)} times")
    return found[0] if found else None


def _required(parent: ET.Element, name: str, path: str) -> ET.Element:
    el = _optional(parent, name, path)
    if el is None:
        raise SignatureError(f"{path}/{name} is missing")
    return el


def _text(el: ET.Element) -> str:
    return (el.text or "").strip()


def _decode_value(text: str) -> bytes:
    compact = "".join(text.split())
    if not compact:
        raise SignatureError("Signature/SignatureValue is empty")
    if len(compact) % 2 == 0 and _HEX.fullmatch(compact):
        raw = bytes.fromhex(compact)
    else:
        try:
            raw = base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError):
            raise SignatureError("Signature/SignatureValue is not base64 or hex") from None
    if len(raw) != 64 and not _rs_candidates(raw):
        raise SignatureError(f"Signature/SignatureValue is {len(raw)} bytes: neither a 64-byte r‖s "
                             f"nor a DER SEQUENCE of r and s")
    return raw


def parse_signature_file(data: bytes) -> SignatureFile:
    """Read an EBDS file of either form; SignatureError names the element that is wrong."""
    try:
        root = DET.fromstring(data)
    except (ET.ParseError, DefusedXmlException, ValueError, LookupError, TypeError) as exc:
        raise SignatureError(f"Signature: not well-formed XML ({exc})") from None
    if _local(root.tag) != "Signature":
        raise SignatureError(f"Signature: the root element is <{_local(root.tag)}>, not <Signature>")

    ebdid = None
    related = _optional(root, "RelatedEBD", "Signature")
    if related is not None:
        ebdid = _text(_required(related, "EBDID", "Signature/RelatedEBD"))
        if not EBDID_RE.fullmatch(ebdid):
            raise SignatureError(f"Signature/RelatedEBD/EBDID '{ebdid[:64]}' is not a 41-digit EBDID")

    cert = _optional(root, "SignatureCert", "Signature")
    form: SignatureForm = "new" if cert is None else "old"
    cert_sn = _text(_required(root, "CertSN", "Signature") if cert is None
                    else _required(cert, "CertSN", "Signature/SignatureCert"))

    algorithm = _optional(root, "SignatureAlgorithm", "Signature")
    if algorithm is not None and _text(algorithm).upper() not in _SIGNATURE_ALGORITHMS:
        raise SignatureError(f"Signature/SignatureAlgorithm '{_text(algorithm)[:64]}' is not SM2 "
                             f"(expected SM2-SM3 or SM2)")
    digest = _optional(root, "DigestAlgorithm", "Signature")
    if digest is not None and _text(digest).upper() != "SM3":
        raise SignatureError(f"Signature/DigestAlgorithm '{_text(digest)[:64]}' is not SM3")

    value = _decode_value(_required(root, "SignatureValue", "Signature").text or "")
    return SignatureFile(form=form, ebdid=ebdid, cert_sn=cert_sn, value=value)
