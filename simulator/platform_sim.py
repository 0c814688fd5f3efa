"""Stand-in for the county emergency-broadcast platform (县级应急广播平台) on the national interface.

Written from /work/shared/NATIONAL-PLATFORM.md alone — it shares no code with the gateway's encoder
and decoder (the simulator imports neither ``controller`` nor ``drivers``), so a test that passes
between the two is a real cross-check of both readings of the interface, not of one reading twice.

The wire (GD/J 083-2018 as vendors implement it): an EBD is a tar ``EBDT_<EBDID>.tar`` holding
``EBDB_<EBDID>.xml`` (the data), ``EBDS_EBDB_<EBDID>.xml`` (an SM2-over-SM3 signature of the EBDB
file's raw bytes) and any media, POSTed as multipart/form-data part ``file``; the HTTP answer is
another tar holding a signed ``EBDResponse``. Requests that need a longer answer (EBMStateRequest,
OMDRequest) are answered later by a separate POST whose ``RelatedEBD`` names the request.

:class:`PlatformSim` runs on threads (stdlib HTTP server, blocking httpx client) so it can serve a
gateway under test from any event loop: async tests call it through ``asyncio.to_thread``.
Choices where the public record is silent (all configurable):

- Auxiliary ``Digest`` is the lowercase hex SHA-256 of the file (``aux_digest="sm3"`` switches to
  SM3; pure-Python SM3 of a 10 MB file takes long, so SHA-256 is the default).
- ``SignatureValue`` is base64 of r‖s (32 + 32 bytes); ``signature_encoding="hex"`` and
  ``signature_der=True`` give the other encodings. Incoming values may be any of the four.
- Times are China Standard Time (UTC+8, no daylight saving since 1991), ``YYYY-MM-DD HH:MM:SS``.
- An EBD from an unregistered ``SRC/EBRID`` is recorded but answered ResultCode 5.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import email.parser
import email.policy
import hashlib
import io
import logging
import os
import re
import secrets
import sys
import tarfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import defusedxml.ElementTree as SafeET
import httpx
from gmssl import sm2, sm3

log = logging.getLogger(__name__)

CST = timezone(timedelta(hours=8), "CST")
"""Asia/Shanghai without needing tzdata: China has kept UTC+8 all year since 1991."""
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
DEFAULT_USER_ID = "1234567812345678"
"""The GM/T 0003 default SM2 signer id — the usual choice; the platform's real one is unknown."""
MAX_UPLOAD = 64 * 1024 * 1024
"""Larger POSTs are refused (413): a 10 MB MP3 bench file fits with room to spare."""

RESULT_CODES = {0: ("已接收未处理", "received, not processed"),
                1: ("接收解析及验签成功", "parsed and verified"),
                2: ("接收解析失败", "parse failed"), 3: ("内容缺失", "content missing"),
                4: ("签名验证失败", "signature verification failed"), 5: ("其他错误", "other error")}
"""EBDResponse ResultCode: (中文, English)."""
BRD_STATES = {0: ("未处理", "not processed"), 1: ("等待播发", "waiting"), 2: ("正在播发", "playing"),
              3: ("播发成功", "succeeded"), 4: ("播发失败", "failed"), 5: ("已取消", "cancelled")}
FINAL_BRD_STATES = frozenset({3, 4, 5})
TERMINAL_STATES = {1: ("正常", "normal"), 2: ("关机", "off"), 3: ("故障", "fault"),
                   4: ("故障恢复", "fault recovered"), 5: ("播发中", "broadcasting")}
"""EBRDTState StateCode: (中文, English)."""

_CURVE = sm2.default_ecc_table
_N = int(_CURVE["n"], 16)


class PlatformError(RuntimeError):
    """The gateway refused a request (EBDResponse ResultCode other than 1), so no answer will follow."""


# ------------------------------------------------------------------------------------------ SM2 / SM3

def _sm3(data: bytes) -> bytes:
    return bytes.fromhex(sm3.sm3_hash(list(data)))


def _crypt(private_hex: str, public_hex: str) -> sm2.CryptSM2:
    crypt = sm2.CryptSM2(private_key=private_hex, public_key=public_hex)
    # gmssl strips a leading "04" with str.lstrip("04"), which also eats a key's own leading 0/4
    # digits (1 key in ~256 would then never verify): set the 128-digit x‖y key as given.
    crypt.public_key = public_hex[2:] if len(public_hex) == 130 else public_hex
    return crypt


def public_key_of(private_hex: str) -> str:
    """The 128-hex x‖y public key of an SM2 private key (d·G)."""
    d = int(private_hex, 16)
    if not 1 <= d < _N - 1:
        raise ValueError("SM2 private key out of range")
    return _crypt(private_hex, "")._kg(d, _CURVE["g"])


def generate_keypair() -> tuple[str, str]:
    """A fresh SM2 key pair as (private 64 hex, public 128 hex x‖y)."""
    private_hex = f"{secrets.randbelow(_N - 2) + 1:064x}"
    return private_hex, public_key_of(private_hex)


def normalize_public_key(text: str) -> str:
    """128 hex x‖y from what people paste: optional ``04`` prefix, whitespace, upper case."""
    key = re.sub(r"\s+", "", text).lower()
    if len(key) == 130 and key.startswith("04"):
        key = key[2:]
    if not re.fullmatch(r"[0-9a-f]{128}", key):
        raise ValueError("an SM2 public key is 128 hex digits (x‖y), optionally prefixed 04")
    return key


def sm2_z(public_hex: str, user_id: str = DEFAULT_USER_ID) -> bytes:
    """Z = SM3(ENTL ‖ ID ‖ a ‖ b ‖ xG ‖ yG ‖ xA ‖ yA) of GM/T 0003.2, computed here, not by gmssl."""
    uid = user_id.encode()
    head = (len(uid) * 8).to_bytes(2, "big") + uid
    curve = bytes.fromhex(_CURVE["a"] + _CURVE["b"] + _CURVE["g"])
    return _sm3(head + curve + bytes.fromhex(public_hex))


def sm2_sign(private_hex: str, public_hex: str, message: bytes, user_id: str = DEFAULT_USER_ID) -> bytes:
    """SM2 signature r‖s (64 bytes) of SM3(Z‖M)."""
    e = _sm3(sm2_z(public_hex, user_id) + message)
    crypt = _crypt(private_hex, public_hex)
    while True:  # gmssl returns None for the rare k that gives r = 0 or s = 0; draw again
        signature = crypt.sign(e, f"{secrets.randbelow(_N - 1) + 1:064x}")
        if signature:
            return bytes.fromhex(signature)


def _der_to_rs(der: bytes) -> bytes | None:
    """r‖s from a DER SEQUENCE of two INTEGERs, None when it is not one."""
    if len(der) < 8 or der[0] != 0x30 or der[1] != len(der) - 2:
        return None
    values, pos = [], 2
    for _ in range(2):
        if pos + 2 > len(der) or der[pos] != 0x02:
            return None
        size = der[pos + 1]
        value = int.from_bytes(der[pos + 2:pos + 2 + size], "big")
        if size == 0 or size > 33 or value >= 1 << 256:
            return None
        values.append(value)
        pos += 2 + size
    return b"".join(v.to_bytes(32, "big") for v in values) if pos == len(der) else None


def _rs_to_der(rs: bytes) -> bytes:
    def integer(value: bytes) -> bytes:
        value = value.lstrip(b"\0") or b"\0"
        if value[0] & 0x80:
            value = b"\0" + value
        return bytes([0x02, len(value)]) + value
    body = integer(rs[:32]) + integer(rs[32:])
    return bytes([0x30, len(body)]) + body


def sm2_verify(public_hex: str, message: bytes, signature: bytes, user_id: str = DEFAULT_USER_ID) -> bool:
    """Check an SM2-SM3 signature given as r‖s (64 bytes) or DER."""
    rs = signature if len(signature) == 64 else _der_to_rs(signature)
    if rs is None:
        return False
    r, s = int.from_bytes(rs[:32], "big"), int.from_bytes(rs[32:], "big")
    if not (1 <= r < _N and 1 <= s < _N):
        return False
    e = _sm3(sm2_z(public_hex, user_id) + message)
    try:
        return bool(_crypt("", public_hex).verify(rs.hex(), e))
    except (TypeError, ValueError):  # a public key that is not a curve point
        return False


def _signature_candidates(value: str) -> list[bytes]:
    """The byte strings a SignatureValue may stand for: hex and base64 both look plausible."""
    value = re.sub(r"\s+", "", value)
    found: list[bytes] = []
    if re.fullmatch(r"(?:[0-9a-fA-F]{2})+", value):
        found.append(bytes.fromhex(value))
    with contextlib.suppress(binascii.Error, ValueError):
        found.append(base64.b64decode(value, validate=True))
    return found


# ------------------------------------------------------------------------------------------ XML

def _run_start(per_second: float) -> int:
    """Where a run's daily counter starts: a real platform persists its counters, this stand-in
    starts each run further into the day (seconds since midnight × ``per_second``), so a second run
    on the same day does not reuse an id the gateway has already answered (it would then answer
    the new package with the old reply, not play it)."""
    now = now_cst()
    return 1 + int((now.hour * 3600 + now.minute * 60 + now.second) * per_second)


def now_cst() -> datetime:
    return datetime.now(CST)


def format_time(moment: datetime | str | None) -> str:
    """``YYYY-MM-DD HH:MM:SS`` in China Standard Time; a string passes through untouched."""
    if isinstance(moment, str):
        return moment
    moment = moment or now_cst()
    if moment.tzinfo is not None:
        moment = moment.astimezone(CST)
    return moment.strftime(TIME_FORMAT)


def element(tag: str, content: Any = None) -> ET.Element:
    """An element from nested data: a mapping gives children in order (a list value repeats the
    child, None leaves it out), anything else gives the text."""
    node = ET.Element(tag)
    if isinstance(content, Mapping):
        for key, value in content.items():
            for item in value if isinstance(value, list) else [value]:
                if item is not None:
                    node.append(item if isinstance(item, ET.Element) else element(key, item))
    elif content is not None:
        node.text = str(content)
    return node


def xml_bytes(root: ET.Element) -> bytes:
    """UTF-8 with the declaration vendors write (double quotes), indented for people reading dumps."""
    ET.indent(root)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode").encode()


# ------------------------------------------------------------------------------------------ packages

@dataclass
class Package:
    """The parts of one EBDT tar, found by their name prefixes."""

    ebdb: bytes
    ebds: bytes | None
    media: dict[str, bytes]
    name_ebdid: str


def read_package(tar: bytes) -> Package:
    """Split an EBDT tar in memory; ValueError when it is not one."""
    ebdb: tuple[str, bytes] | None = None
    ebds: bytes | None = None
    media: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(tar), mode="r:*") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                name = member.name.rsplit("/", 1)[-1]
                handle = archive.extractfile(member)
                data = handle.read() if handle else b""
                if name.startswith("EBDS_EBDB_") and name.endswith(".xml"):
                    ebds = data
                elif name.startswith("EBDB_") and name.endswith(".xml"):
                    ebdb = (name[len("EBDB_"):-len(".xml")], data)
                else:
                    media[name] = data
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ValueError(f"not a tar archive ({str(exc).splitlines()[0]})") from exc
    if ebdb is None:
        raise ValueError("no EBDB_<EBDID>.xml in the package")
    return Package(ebdb=ebdb[1], ebds=ebds, media=media, name_ebdid=ebdb[0])


def write_package(ebdid: str, ebdb: bytes, ebds: bytes | None,
                  media: Mapping[str, bytes] | None = None) -> bytes:
    """An EBDT tar: the data file, its signature file, then the media files."""
    out = io.BytesIO()
    files = [(f"EBDB_{ebdid}.xml", ebdb)]
    if ebds is not None:
        files.append((f"EBDS_EBDB_{ebdid}.xml", ebds))
    files.extend((media or {}).items())
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def multipart_file(content_type: str, body: bytes) -> bytes:
    """The ``file`` part of a multipart/form-data body, parsed in memory with the stdlib email parser."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise ValueError("not a multipart body")
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == "file":
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                return payload
    raise ValueError('no form part named "file"')


# ------------------------------------------------------------------------------------------ records

@dataclass(frozen=True)
class Received:
    """One EBD the stand-in was sent, with the verdict it answered."""

    ebd_type: str
    ebdid: str
    related_ebdid: str | None
    src_ebrid: str
    xml: bytes
    root: ET.Element | None
    signature_ok: bool | None
    """None: not checked (no key registered for the sender, or an unsigned heartbeat)."""
    at: float
    """time.time() when it arrived."""
    result_code: int = 1
    result_desc: str = ""
    media: dict[str, bytes] = field(default_factory=dict)

    def text(self, path: str, default: str | None = None) -> str | None:
        """Text at an ElementTree path under ``<EBD>``, e.g. ``"EBMStateResponse/BrdStateCode"``."""
        if self.root is None:
            return default
        found = self.root.findtext(path)
        return default if found is None else found.strip()

    def all(self, path: str) -> list[ET.Element]:
        return [] if self.root is None else self.root.findall(path)


@dataclass(frozen=True)
class Sent:
    """One EBD posted to a gateway, and what its HTTP answer said."""

    ebdid: str
    http_status: int
    result_code: int | None
    """The EBDResponse ResultCode; None when the answer held no readable EBDResponse."""
    result_desc: str
    response_signature_ok: bool | None
    response_xml: bytes | None
    ebmid: str | None = None

    @property
    def accepted(self) -> bool:
        return self.http_status == 200 and self.result_code == 1


@dataclass
class _Gateway:
    ebrid: str
    url: str
    public_key: str | None


def _parse_ebd(xml: bytes) -> ET.Element:
    root = SafeET.fromstring(xml)
    if root.tag != "EBD":
        raise ValueError(f"root element is <{root.tag}>, not <EBD>")
    return root


def _signature_ok(pkg: Package, ebdid: str, public_key: str | None, user_id: str) -> bool | None:
    """Verify EBDS against the EBDB bytes, whichever form and encoding the sender chose."""
    if public_key is None:
        return None
    if pkg.ebds is None:
        return False
    try:
        sig = _parse_signature(pkg.ebds)
    except (ET.ParseError, ValueError):
        return False
    related = sig.findtext("RelatedEBD/EBDID")
    if related is not None and related.strip() != ebdid:
        return False
    value = sig.findtext(".//SignatureValue") or ""
    return any(sm2_verify(public_key, pkg.ebdb, candidate, user_id)
               for candidate in _signature_candidates(value))


def _parse_signature(xml: bytes) -> ET.Element:
    return SafeET.fromstring(xml)


# ------------------------------------------------------------------------------------------ the stand-in

class PlatformSim:
    """A county platform on the national interface: receives and answers EBDs, and sends them.

    Every method blocks; the HTTP server runs in a daemon thread between :meth:`start` and
    :meth:`stop`. ``on_receive`` is called (on the server thread) after each EBD is recorded.
    """

    def __init__(self, *, ebrid: str, private_key_hex: str, cert_sn: str = "PLATFORM-SIM-01",
                 host: str = "127.0.0.1", port: int = 0, path: str = "/ebd",
                 user_id: str = DEFAULT_USER_ID, signature_form: str = "new",
                 signature_encoding: str = "base64", signature_der: bool = False,
                 aux_digest: str = "sha256", name: str = "县应急广播平台（模拟）",
                 on_receive: Callable[[Received], None] | None = None, http_timeout: float = 30.0) -> None:
        if signature_form not in ("new", "old"):
            raise ValueError("signature_form is 'new' or 'old'")
        if signature_encoding not in ("base64", "hex"):
            raise ValueError("signature_encoding is 'base64' or 'hex'")
        if aux_digest not in ("sha256", "sm3"):
            raise ValueError("aux_digest is 'sha256' or 'sm3'")
        self.ebrid = ebrid
        self.private_key = private_key_hex.strip().lower()
        self.public_key = public_key_of(self.private_key)
        self.cert_sn, self.user_id, self.name = cert_sn, user_id, name
        self.signature_form, self.signature_encoding, self.signature_der = (
            signature_form, signature_encoding, signature_der)
        self.aux_digest = aux_digest
        self.on_receive = on_receive
        self.host, self.port, self.path = host, port, path
        self._gateways: dict[str, _Gateway] = {}
        self._received: list[Received] = []
        self._cond = threading.Condition()
        self._ids = threading.Lock()
        self._ebd_seq: tuple[str, int] = ("", 0)
        self._ebm_seq: tuple[str, int] = ("", 0)
        self._played: dict[str, dict[str, Any]] = {}
        self._down = False
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._client = httpx.Client(timeout=http_timeout)

    # ------------------------------------------------------------------ setup
    def register_gateway(self, ebrid: str, url: str, public_key_hex: str | None) -> None:
        """A node allowed to talk to us; with a key, its signatures are checked (None: never)."""
        key = normalize_public_key(public_key_hex) if public_key_hex else None
        self._gateways[ebrid] = _Gateway(ebrid, url, key)

    def start(self) -> None:
        if self._server is not None:
            return
        if self._client.is_closed:  # started again after stop()
            self._client = httpx.Client(timeout=self._client.timeout)
        self._server = ThreadingHTTPServer((self.host, self.port), _handler_class(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"platform-sim-{self.port}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread:
                self._thread.join(timeout=5)
            self._server, self._thread = None, None
        self._client.close()

    def __enter__(self) -> PlatformSim:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    def set_down(self, down: bool) -> None:
        """While down, every POST gets HTTP 503 and nothing is recorded (a county link outage)."""
        self._down = down

    # ------------------------------------------------------------------ what arrived
    @property
    def received(self) -> list[Received]:
        with self._cond:
            return list(self._received)

    def received_of(self, ebd_type: str) -> list[Received]:
        with self._cond:
            return [r for r in self._received if r.ebd_type == ebd_type]

    def clear_received(self) -> None:
        with self._cond:
            self._received.clear()

    def wait_for(self, predicate: Callable[[Received], bool], timeout: float = 10.0) -> Received:
        """The earliest recorded EBD (already here or still to come) that matches; TimeoutError if none."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for item in self._received:
                    if predicate(item):
                        return item
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no matching EBD within {timeout:g} s")
                self._cond.wait(remaining)

    # ------------------------------------------------------------------ identifiers
    def _next_ebdid(self) -> str:
        with self._ids:
            day = now_cst().strftime("%Y%m%d")
            seq = self._ebd_seq[1] + 1 if self._ebd_seq[0] == day else _run_start(1000)
            self._ebd_seq = (day, seq)
        return f"10{self.ebrid}{day}{seq:08d}"

    def heartbeat_ebdid(self) -> str:
        return f"01{self.ebrid}{'0' * 16}"

    def next_ebmid(self) -> str:
        """Platform EBRID + yyyyMMdd + a 4-digit daily counter."""
        with self._ids:
            day = now_cst().strftime("%Y%m%d")
            seq = self._ebm_seq[1] + 1 if self._ebm_seq[0] == day else _run_start(0.1)
            self._ebm_seq = (day, seq)
        return f"{self.ebrid}{day}{seq:04d}"

    # ------------------------------------------------------------------ building
    def _signature_xml(self, ebdid: str, ebdb: bytes, tamper: bool) -> bytes:
        rs = bytearray(sm2_sign(self.private_key, self.public_key, ebdb, self.user_id))
        if tamper:
            rs[-1] ^= 0x01
        raw = _rs_to_der(bytes(rs)) if self.signature_der else bytes(rs)
        value = raw.hex() if self.signature_encoding == "hex" else base64.b64encode(raw).decode()
        if self.signature_form == "new":
            content: dict[str, Any] = {"Version": "1", "RelatedEBD": {"EBDID": ebdid}, "CertSN": self.cert_sn,
                                       "SignatureAlgorithm": "SM2-SM3", "SignatureValue": value}
        else:
            content = {"SignatureCert": {"CertType": "01", "IssuerID": self.ebrid, "CertSN": self.cert_sn},
                       "SignatureTime": format_time(None), "DigestAlgorithm": "SM3",
                       "SignatureAlgorithm": "SM2", "SignatureValue": value}
        return xml_bytes(element("Signature", content))

    def build_package(self, ebd_type: str, body_element: ET.Element | Mapping[str, Any] | None,
                      media: Mapping[str, bytes] | None = None, sign: bool = True, tamper: bool = False, *,
                      ebdid: str | None = None, related_ebdid: str | None = None,
                      to: str | None = None) -> tuple[str, bytes]:
        """(EBDID, EBDT tar) of one EBD; ``tamper`` flips a bit of the signature, ``sign=False``
        leaves the EBDS file out — both for tests that need a gateway to refuse a package."""
        ebdid = ebdid or self._next_ebdid()
        dest = to if to is not None else next(iter(self._gateways), None)  # "" leaves DEST out
        body = body_element if isinstance(body_element, ET.Element) else element(ebd_type, body_element or {})
        root = element("EBD", {
            "EBDVersion": "1", "EBDID": ebdid, "EBDType": ebd_type,
            "SRC": {"EBRID": self.ebrid, "URL": self.url},
            "DEST": {"EBRID": dest} if dest else None,
            "EBDTime": format_time(None),
            "RelatedEBD": {"EBDID": related_ebdid} if related_ebdid else None,
        })
        root.append(body)
        ebdb = xml_bytes(root)
        ebds = self._signature_xml(ebdid, ebdb, tamper) if sign else None
        return ebdid, write_package(ebdid, ebdb, ebds, media)

    def _digest(self, data: bytes) -> str:
        return hashlib.sha256(data).hexdigest() if self.aux_digest == "sha256" else _sm3(data).hex()

    # ------------------------------------------------------------------ sending
    def _gateway(self, to: str | None) -> _Gateway:
        if to is not None:
            return self._gateways[to]
        if not self._gateways:
            raise RuntimeError("no gateway registered (register_gateway first)")
        return next(iter(self._gateways.values()))

    def send_raw(self, tar_bytes: bytes, *, to: str | None = None, ebdid: str | None = None) -> Sent:
        """POST a package as it is and read the EBDResponse. httpx errors (gateway unreachable) raise."""
        gateway = self._gateway(to)
        if ebdid is None:
            try:
                ebdid = read_package(tar_bytes).name_ebdid
            except ValueError:
                ebdid = ""
        reply = self._client.post(gateway.url, files={
            "file": (f"EBDT_{ebdid or 'unknown'}.tar", tar_bytes, "application/octet-stream")})
        code: int | None = None
        desc, sig_ok, xml = "", None, None
        if reply.status_code == 200 and reply.content:
            try:
                pkg = read_package(reply.content)
                root = _parse_ebd(pkg.ebdb)
                xml = pkg.ebdb
                code_text = root.findtext("EBDResponse/ResultCode")
                code = int(code_text) if code_text and code_text.strip().isdigit() else None
                desc = (root.findtext("EBDResponse/ResultDesc") or "").strip()
                sig_ok = _signature_ok(pkg, (root.findtext("EBDID") or "").strip(), gateway.public_key,
                                       self.user_id)
            except (ValueError, ET.ParseError) as exc:
                desc = f"unreadable answer: {exc}"
        else:
            desc = f"HTTP {reply.status_code}"
        return Sent(ebdid, reply.status_code, code, desc, sig_ok, xml)

    def _send(self, ebd_type: str, body: ET.Element | Mapping[str, Any], *,
              media: Mapping[str, bytes] | None = None, to: str | None = None, ebdid: str | None = None,
              ebmid: str | None = None) -> Sent:
        ebdid, tar = self.build_package(ebd_type, body, media, ebdid=ebdid, to=to)
        sent = self.send_raw(tar, to=to, ebdid=ebdid)
        return Sent(sent.ebdid, sent.http_status, sent.result_code, sent.result_desc,
                    sent.response_signature_ok, sent.response_xml, ebmid)

    def play(self, *, area_codes: Iterable[str] | str, text: str = "", title: str = "", severity: int = 3,
             event_type: str = "11B03000", mp3: bytes | None = None, wav: bytes | None = None,
             start: datetime | str | None = None, end: datetime | str | None = None, language: str = "zho",
             aux_type_mp3: str = "2", aux_type_wav: str = "3", to: str | None = None,
             ebmid: str | None = None) -> Sent:
        """An EBM MsgType 1 (play) with a fresh EBMID; audio goes in the tar as Auxiliary files."""
        ebmid = ebmid or self.next_ebmid()
        areas = area_codes if isinstance(area_codes, str) else ",".join(area_codes)
        begin = start or now_cst()
        finish = end or (begin + timedelta(hours=1) if isinstance(begin, datetime) else None)
        media: dict[str, bytes] = {}
        auxiliaries = []
        for data, suffix, aux_type in ((mp3, "mp3", aux_type_mp3), (wav, "wav", aux_type_wav)):
            if data is not None:
                file_name = f"{ebmid}.{suffix}"
                media[file_name] = data
                auxiliaries.append({"AuxiliaryType": aux_type, "AuxiliaryDesc": file_name, "Size": len(data),
                                    "Digest": self._digest(data)})
        basic = {"MsgType": "1", "SenderName": self.name, "SenderCode": self.ebrid,
                 "SendTime": format_time(None), "EventType": event_type, "Severity": severity,
                 "StartTime": format_time(begin), "EndTime": format_time(finish) if finish else None}
        content = {"LanguageCode": language, "MsgTitle": title or None, "MsgDesc": text, "AreaCode": areas,
                   "Auxiliary": auxiliaries}
        self._played[ebmid] = {"basic": basic, "areas": areas, "language": language}
        body = {"EBMVersion": "1", "EBMID": ebmid, "MsgBasicInfo": basic, "MsgContent": content}
        return self._send("EBM", body, media=media, to=to, ebmid=ebmid)

    def cancel(self, ebmid: str, *, to: str | None = None) -> Sent:
        """EBM MsgType 2 with the same EBMID, pointing at it through RelatedInfo."""
        played = self._played.get(ebmid, {})
        original = played.get("basic", {})
        basic = {"MsgType": "2", "SenderName": self.name, "SenderCode": self.ebrid,
                 "SendTime": format_time(None), "EventType": original.get("EventType"),
                 "Severity": original.get("Severity"),
                 "StartTime": original.get("StartTime"), "EndTime": original.get("EndTime")}
        content = {"LanguageCode": played.get("language", "zho"), "AreaCode": played.get("areas")}
        body = {"EBMVersion": "1", "EBMID": ebmid, "RelatedInfo": {"EBMID": ebmid}, "MsgBasicInfo": basic,
                "MsgContent": content if played else None}
        return self._send("EBM", body, to=to, ebmid=ebmid)

    def request_state(self, ebmid: str, *, to: str | None = None) -> Sent:
        return self._send("EBMStateRequest", {"EBM": {"EBMID": ebmid}}, to=to, ebmid=ebmid)

    def omd(self, omd_type: str, rpt_type: str = "Full", start: datetime | str | None = None,
            end: datetime | str | None = None, *, to: str | None = None) -> Sent:
        """OMDRequest; without a window it asks for the last 24 hours."""
        finish = end or now_cst()
        begin = start or (finish - timedelta(days=1) if isinstance(finish, datetime) else None)
        params = {"RptStartTime": format_time(begin) if begin else None, "RptEndTime": format_time(finish),
                  "RptType": rpt_type}
        return self._send("OMDRequest", {"OMDType": omd_type, "Params": params}, to=to)

    def connection_check(self, *, to: str | None = None) -> Sent:
        """A heartbeat: the fixed heartbeat EBDID, RptTime now."""
        return self._send("ConnectionCheck", {"RptTime": format_time(None)}, to=to,
                          ebdid=self.heartbeat_ebdid())

    def _answered(self, sent: Sent, timeout: float, ebd_type: str | None) -> Received:
        if not sent.accepted:
            raise PlatformError(f"request {sent.ebdid} refused: HTTP {sent.http_status}, "
                                f"ResultCode {sent.result_code} {sent.result_desc}".rstrip())
        return self.wait_for(
            lambda r: r.related_ebdid == sent.ebdid and (ebd_type is None or r.ebd_type == ebd_type), timeout)

    def request_state_and_wait(self, ebmid: str, timeout: float = 10.0, *, to: str | None = None) -> Received:
        """EBMStateRequest, then the EBMStateResponse the gateway posts back for it."""
        return self._answered(self.request_state(ebmid, to=to), timeout, "EBMStateResponse")

    def omd_and_wait(self, omd_type: str, rpt_type: str = "Full", start: datetime | str | None = None,
                     end: datetime | str | None = None, timeout: float = 10.0, *,
                     to: str | None = None) -> Received:
        """OMDRequest, then the separate answer whose RelatedEBD is the request."""
        return self._answered(self.omd(omd_type, rpt_type, start, end, to=to), timeout, None)

    # ------------------------------------------------------------------ receiving
    def _accept(self, content_type: str, body: bytes) -> tuple[Received | None, bytes]:
        """Judge one POST body; returns what to record (None: nothing parseable) and the answer tar."""
        related, src = "", None
        try:
            tar = multipart_file(content_type, body) if content_type.startswith("multipart/") else body
            pkg = read_package(tar)
            related = pkg.name_ebdid
            root = _parse_ebd(pkg.ebdb)
        except (ValueError, ET.ParseError) as exc:
            code, desc = 2, f"parse failed: {exc}"
            received = None
        else:
            ebdid = (root.findtext("EBDID") or related).strip()
            ebd_type = (root.findtext("EBDType") or "").strip()
            src = (root.findtext("SRC/EBRID") or "").strip()
            related = ebdid
            gateway = self._gateways.get(src)
            signature_ok = _signature_ok(pkg, ebdid, gateway.public_key if gateway else None, self.user_id)
            if ebd_type == "ConnectionCheck" and pkg.ebds is None:
                signature_ok = None  # heartbeats are commonly sent unsigned
            if gateway is None:
                code, desc = 5, f"SRC/EBRID {src or '(none)'} is not a registered node"
            elif not ebd_type or root.find(ebd_type) is None:
                code, desc = 3, f"no <{ebd_type or 'EBDType'}> content"
            elif signature_ok is False:
                code, desc = 4, "signature verification failed"
            else:
                code, desc = 1, "received"
            rel = root.findtext("RelatedEBD/EBDID")
            received = Received(ebd_type, ebdid, rel.strip() if rel else None, src, pkg.ebdb, root,
                                signature_ok, time.time(), code, desc, pkg.media)
        answer = self._response(related, src, code, desc)
        if received is not None:
            with self._cond:
                self._received.append(received)
                self._cond.notify_all()
            if self.on_receive:
                try:
                    self.on_receive(received)
                except Exception:
                    log.exception("on_receive callback failed")
        return received, answer

    def _response(self, related_ebdid: str, dest: str | None, code: int, desc: str) -> bytes:
        body = {"ResultCode": code, "ResultDesc": desc}
        _, tar = self.build_package("EBDResponse", body, related_ebdid=related_ebdid or None, to=dest or "")
        return tar

    def _serve_post(self, request: BaseHTTPRequestHandler) -> None:
        if urlsplit(request.path).path != self.path:
            _reply(request, 404, b"")
            return
        try:
            length = int(request.headers.get("Content-Length", ""))
        except ValueError:
            _reply(request, 411, b"")
            return
        if length > MAX_UPLOAD:
            _reply(request, 413, b"")
            return
        body = request.rfile.read(length)
        if self._down:
            _reply(request, 503, b"county platform link down (simulated)")
            return
        received, answer = self._accept(request.headers.get("Content-Type", ""), body)
        ebdid = received.ebdid if received else "unknown"
        _reply(request, 200, answer, "application/octet-stream", f"EBDT_{ebdid}.tar")


def _reply(request: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str = "text/plain",
           file_name: str | None = None) -> None:
    request.send_response(status)
    request.send_header("Content-Type", content_type)
    request.send_header("Content-Length", str(len(body)))
    if file_name:
        request.send_header("Content-Disposition", f'attachment; filename="{file_name}"')
    request.end_headers()
    request.wfile.write(body)


def _handler_class(sim: PlatformSim) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "ebc-platform-sim/1"

        def do_POST(self) -> None:
            sim._serve_post(self)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.client_address[0], *args)

    return Handler


# ------------------------------------------------------------------------------------------ test audio

def _mpeg_bitrate_range(sample_rate: int) -> tuple[int, int]:
    """(min, max) kbit/s of the MPEG layer III version LAME picks for this sample rate."""
    if sample_rate >= 32000:
        return 32, 320  # MPEG-1
    if sample_rate >= 16000:
        return 8, 160  # MPEG-2
    return 8, 64  # MPEG-2.5


def make_test_mp3(seconds: float, *, freq: float = 440.0, sample_rate: int = 16000,
                  bitrate_kbps: int | None = None) -> bytes:
    """A mono sine tone as MP3, for EBM Auxiliary files.

    With ``bitrate_kbps`` the file is constant bit rate, so its size is about seconds × rate / 8 —
    how a bench makes a 10 MB file (e.g. 262 s at 320 kbit/s, 44.1 kHz). libsndfile maps
    ``compression_level`` 0…1 linearly from the highest to the lowest bit rate of the MPEG version
    and LAME rounds to the nearest standard rate.
    """
    import numpy as np
    import soundfile as sf

    t = np.arange(round(seconds * sample_rate)) / sample_rate
    tone = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    options: dict[str, Any] = {}
    if bitrate_kbps is not None:
        low, high = _mpeg_bitrate_range(sample_rate)
        rate = min(max(bitrate_kbps, low), high)
        options = {"bitrate_mode": "CONSTANT", "compression_level": (high - rate) / (high - low)}
    out = io.BytesIO()
    sf.write(out, tone, sample_rate, format="MP3", **options)
    return out.getvalue()


# ------------------------------------------------------------------------------------------ CLI

def describe(item: Received) -> str:
    """One line per received EBD, for people watching ``serve``."""
    when = datetime.fromtimestamp(item.at, CST).strftime("%H:%M:%S")
    sig = {True: "sig ok", False: "SIG BAD", None: "sig -"}[item.signature_ok]
    line = (f"{when} {item.ebd_type or '?'} {item.ebdid} from {item.src_ebrid or '?'} "
            f"[{sig}, ResultCode {item.result_code}]")
    if item.related_ebdid:
        line += f" re {item.related_ebdid}"
    if item.ebd_type == "EBMStateResponse":
        code = item.text("EBMStateResponse/BrdStateCode", "")
        zh, en = BRD_STATES.get(int(code) if code.isdigit() else -1, ("?", "?"))
        line += f" EBM {item.text('EBMStateResponse/EBM/EBMID', '?')} BrdStateCode {code} {zh} {en}"
    elif item.ebd_type == "EBRDTState":
        codes = [e.findtext("StateCode", "").strip() for e in item.all("EBRDTState/EBRDT")]
        line += f" {len(codes)} terminals, StateCode " + ", ".join(f"{c}×{codes.count(c)}"
                                                                   for c in sorted(set(codes)))
    elif item.ebd_type.endswith("Info") and item.root is not None:
        line += f" {len(item.all(f'{item.ebd_type}/*')) - len(item.all(f'{item.ebd_type}/Params'))} entries"
    elif item.result_code != 1:
        line += f" — {item.result_desc}"
    return line


_print_lock = threading.Lock()


def _say(line: str) -> None:
    """One whole line to stdout: received EBDs are printed from server threads while the demo talks."""
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _read_public_key(value: str | None) -> str | None:
    if not value:
        return None
    path = Path(value)
    return normalize_public_key(path.read_text() if path.is_file() else value)


def _sim_from_args(args: argparse.Namespace) -> PlatformSim:
    if args.key_file:
        private_hex = Path(args.key_file).read_text().strip()
    else:
        private_hex, _ = generate_keypair()
        _say("no --key-file: using a throw-away key pair (临时密钥)")
    sim = PlatformSim(ebrid=args.ebrid, private_key_hex=private_hex, host=args.host, port=args.port,
                      path=args.path, user_id=args.user_id, signature_form=args.signature_form,
                      on_receive=lambda item: _say(describe(item)))
    if args.gateway_ebrid:
        sim.register_gateway(args.gateway_ebrid, args.gateway_url or "",
                             _read_public_key(args.gateway_public_key))
    return sim


def _announce(sim: PlatformSim) -> None:
    _say(f"county platform stand-in (县级应急广播平台模拟) EBRID {sim.ebrid}")
    _say(f"  URL {sim.url}")
    _say(f"  SM2 public key (公钥) {sim.public_key}")
    for gateway in sim._gateways.values():
        checked = "signatures checked" if gateway.public_key else "signatures NOT checked"
        _say(f"  gateway (网关) {gateway.ebrid} at {gateway.url or '(no URL: receive only)'}, {checked}")


def _serve_forever(sim: PlatformSim) -> int:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        sim.stop()


def _latest_state(sim: PlatformSim, ebmid: str) -> Received | None:
    answers = [r for r in sim.received_of("EBMStateResponse")
               if r.text("EBMStateResponse/EBM/EBMID") == ebmid]
    return answers[-1] if answers else None


def _state_code(item: Received | None) -> int | None:
    code = item.text("EBMStateResponse/BrdStateCode", "") if item else ""
    return int(code) if code and code.isdigit() else None


def _demo(sim: PlatformSim, args: argparse.Namespace) -> int:
    """Heartbeat → play → state until final → OMD terminal info and state → summary."""
    gateway = args.gateway_ebrid
    summary: list[str] = []
    _say(f"waiting up to {args.wait:g} s for the gateway's heartbeat (心跳 ConnectionCheck)…")
    try:
        beat = sim.wait_for(lambda r: r.ebd_type == "ConnectionCheck" and r.src_ebrid == gateway, args.wait)
        summary.append(f"心跳 heartbeat (ConnectionCheck): yes, first at "
                       f"{datetime.fromtimestamp(beat.at, CST):%H:%M:%S}")
    except TimeoutError:
        summary.append(f"心跳 heartbeat (ConnectionCheck): none within {args.wait:g} s — carried on")
        _say(summary[-1])
    try:
        sent = sim.play(area_codes=args.area_code, text=args.text, title=args.title, severity=args.severity)
    except httpx.HTTPError as exc:
        _say(f"cannot reach the gateway at {sim._gateway(None).url}: {exc}")
        return 1
    zh, en = RESULT_CODES.get(-1 if sent.result_code is None else sent.result_code, ("?", "no EBDResponse"))
    summary.append(f"应急广播消息 EBM {sent.ebmid}: HTTP {sent.http_status}, EBDResponse ResultCode "
                   f"{sent.result_code} {zh} {en}, answer signature {_sig_word(sent.response_signature_ok)}")
    _say(summary[-1])
    final = _wait_final_state(sim, sent, args) if sent.accepted else None
    code = _state_code(final)
    if final is None:
        summary.append(f"播发状态 broadcast state (BrdStateCode): no final state within {args.timeout:g} s")
    else:
        zh, en = BRD_STATES.get(code if code is not None else -1, ("?", "?"))
        desc = final.text("EBMStateResponse/BrdStateDesc", "")
        summary.append(f"播发状态 broadcast state (BrdStateCode): {code} {zh} {en}"
                       + (f" — {desc}" if desc else ""))
        coverage = final.text("EBMStateResponse/Coverage/CoverageRate")
        if coverage is not None:
            summary.append(f"覆盖 coverage: rate {coverage}, ResBrdStat "
                           f"{final.text('EBMStateResponse/Coverage/ResBrdStat', '-')}")
    omd_ok = True
    for omd_type in ("EBRDTInfo", "EBRDTState"):
        try:
            answer = sim.omd_and_wait(omd_type, timeout=args.omd_timeout)
        except (TimeoutError, PlatformError, httpx.HTTPError) as exc:
            omd_ok = False
            summary.append(f"运维数据 OMD {omd_type}: no answer ({exc})")
            continue
        terminals = answer.all(f"{answer.ebd_type}/EBRDT")
        if omd_type == "EBRDTInfo":
            names = ", ".join((t.findtext("EBRName") or t.findtext("EBRID") or "?").strip()
                              for t in terminals[:6])
            summary.append(f"终端信息 terminal info (EBRDTInfo): {len(terminals)} terminals"
                           + (f" — {names}{'…' if len(terminals) > 6 else ''}" if names else ""))
        else:
            codes = [int(c) for c in (t.findtext("StateCode", "").strip() for t in terminals) if c.isdigit()]
            counts = ", ".join(f"{codes.count(c)} {TERMINAL_STATES.get(c, ('?', '?'))[0]} "
                               f"{TERMINAL_STATES.get(c, ('?', '?'))[1]}" for c in sorted(set(codes)))
            summary.append(f"终端状态 terminal state (EBRDTState): {len(terminals)} terminals"
                           + (f" — {counts}" if counts else ""))
    bad = [r for r in sim.received if r.src_ebrid == gateway and r.signature_ok is False]
    checked = [r for r in sim.received if r.src_ebrid == gateway and r.signature_ok]
    summary.append(f"签名 signatures from the gateway: {len(checked)} verified, {len(bad)} failed")
    _say("== 演示结果 demo summary ==")
    for line in summary:
        _say("  " + line)
    return 0 if code == 3 and omd_ok and not bad else 1


def _sig_word(ok: bool | None) -> str:
    return {True: "verified (验签通过)", False: "FAILED (验签失败)", None: "not checked (未验签)"}[ok]


def _wait_final_state(sim: PlatformSim, sent: Sent, args: argparse.Namespace) -> Received | None:
    """Poll with EBMStateRequest (and take unsolicited EBMStateResponses) until 3, 4 or 5 arrives."""
    ebmid = sent.ebmid or ""
    deadline = time.monotonic() + args.timeout
    shown: int | None = None
    while True:
        latest = _latest_state(sim, ebmid)
        code = _state_code(latest)
        if code is not None and code != shown:
            zh, en = BRD_STATES.get(code, ("?", "?"))
            _say(f"  BrdStateCode {code} {zh} {en}")
            shown = code
        if code in FINAL_BRD_STATES:
            return latest
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        asked = time.time()
        try:
            sim.request_state(ebmid)
        except httpx.HTTPError as exc:
            _say(f"  state request failed: {exc}")
        with contextlib.suppress(TimeoutError):
            sim.wait_for(_fresh_state(ebmid, asked), min(args.poll, remaining))
        time.sleep(max(0.0, min(args.poll - (time.time() - asked), deadline - time.monotonic())))


def _fresh_state(ebmid: str, since: float) -> Callable[[Received], bool]:
    return lambda r: (r.ebd_type == "EBMStateResponse" and r.at >= since
                      and r.text("EBMStateResponse/EBM/EBMID") == ebmid)


def _keygen(args: argparse.Namespace) -> int:
    private_hex, public_hex = generate_keypair()
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)  # O_CREAT's mode does not apply to an existing file
        handle.write(private_hex + "\n")
    print(public_hex)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="platform-sim", description="County emergency-broadcast platform "
                                     "stand-in (县级应急广播平台模拟) on the national interface.")
    commands = parser.add_subparsers(dest="command", required=True)
    keygen = commands.add_parser("keygen", help="write an SM2 private key file (0600), print the public key")
    keygen.add_argument("--out", required=True, help="private key file to write (64 hex digits)")
    for command, text in (("serve", "run the stand-in and print every EBD it receives"),
                          ("demo", "serve, then play a text EBM and follow it to its final state")):
        sub = commands.add_parser(command, help=text)
        sub.add_argument("--ebrid", required=True, help="the platform's own 23-digit resource code")
        sub.add_argument("--key-file", help="private key file from `keygen` (default: a throw-away key)")
        sub.add_argument("--host", default="127.0.0.1")
        sub.add_argument("--port", type=int, default=0, help="0 picks a free port")
        sub.add_argument("--path", default="/ebd", help="URL path EBDs are POSTed to")
        sub.add_argument("--user-id", default=DEFAULT_USER_ID, help="SM2 signer id")
        sub.add_argument("--signature-form", choices=("new", "old"), default="new")
        sub.add_argument("--gateway-ebrid", required=command == "demo", help="the gateway's resource code")
        sub.add_argument("--gateway-url", required=command == "demo", help="where the gateway takes EBDs")
        sub.add_argument("--gateway-public-key", help="128 hex x‖y, or a file holding it (default: no check)")
    demo = commands.choices["demo"]
    demo.add_argument("--area-code", action="append", required=True, help="12-digit area code (repeatable)")
    demo.add_argument("--text", default="这是一条应急广播测试消息，请勿惊慌。", help="MsgDesc to broadcast")
    demo.add_argument("--title", default="应急广播测试 emergency broadcast test")
    demo.add_argument("--severity", type=int, default=4, help="1 red … 4 blue")
    demo.add_argument("--wait", type=float, default=120.0, help="seconds to wait for the first heartbeat")
    demo.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the final state")
    demo.add_argument("--poll", type=float, default=5.0, help="seconds between EBMStateRequests")
    demo.add_argument("--omd-timeout", type=float, default=30.0, help="seconds to wait for each OMD answer")
    demo.add_argument("--exit-after-demo", action="store_true", help="stop instead of serving on")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``platform-sim keygen | serve | demo``; the exit status of demo is 0 only for a broadcast that
    succeeded (BrdStateCode 3) with both OMD answers and no failed signature."""
    args = _parser().parse_args(argv)
    if args.command == "keygen":
        return _keygen(args)
    sim = _sim_from_args(args)
    sim.start()
    _announce(sim)
    if args.command == "serve":
        return _serve_forever(sim)
    try:
        status = _demo(sim, args)
    except KeyboardInterrupt:
        sim.stop()
        return 130
    if args.exit_after_demo:
        sim.stop()
        return status
    _say("serving on — Ctrl-C to stop (按 Ctrl-C 退出)")
    _serve_forever(sim)
    return status


if __name__ == "__main__":
    sys.exit(main())
