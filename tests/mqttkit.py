"""A real Mosquitto broker for tests, and a paho subscriber that records what the county would see.

``Broker`` writes its own mosquitto.conf under a temporary directory and runs Debian's
``/usr/sbin/mosquitto`` on a free loopback port; ``stop()`` / ``start()`` keep the same port, so
an outage is a real outage. Options: a password file (no anonymous access), TLS with client
certificates (``make_tls`` creates a CA, a server and a client certificate with ``cryptography``),
and ``persistent`` — the broker saves its sessions when stopped, so the test's own subscriber
(``Subscriber(persistent=True)``) keeps its subscription and queued messages across a restart and
cannot miss what the gateway sends in the moment before it has reconnected itself.

``Subscriber`` records every message with its retain flag and arrival time; ``wait_for`` waits
for a condition with a generous timeout (a guard against hangs, never a performance claim).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import pwd
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion
from simkit import free_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
HANG_GUARD_S = 90.0
"""Only a guard against a hung test, never a performance claim."""


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None,
          issuer_key: ec.EllipticCurvePrivateKey | None, *, ca: bool = False,
          server: bool = False) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def make_tls(folder: Path, client_name: str = "gw-test") -> TlsFiles:
    """A throw-away CA with a server certificate for 127.0.0.1 and a client certificate."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _cert("ebc test CA", ca_key, None, None, ca=True)
    files = TlsFiles(folder / "ca.pem", folder / "server.pem", folder / "server.key", folder / "client.pem",
                     folder / "client.key")
    for cert_path, key_path, cn, server in ((files.server_cert, files.server_key, "127.0.0.1", True),
                                            (files.client_cert, files.client_key, client_name, False)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert_path.write_bytes(_cert(cn, key, ca_cert.subject, ca_key, server=server)
                              .public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_path.chmod(0o600)
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return files


class Broker:
    """``mosquitto -c <conf>`` on a free loopback port that stays the same across restarts."""

    def __init__(self, folder: Path, *, users: dict[str, str] | None = None, tls: TlsFiles | None = None,
                 persistent: bool = False) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls = tls
        self.conf = folder / "mosquitto.conf"
        self.log_path = folder / "mosquitto.log"
        lines = [f"listener {self.port} 127.0.0.1",
                 f"user {pwd.getpwuid(os.getuid()).pw_name}",  # as root it would become 'mosquitto'

                 f"allow_anonymous {'false' if users else 'true'}",
                 f"persistence {'true' if persistent else 'false'}",
                 "max_queued_messages 0",  # a test subscriber must not lose a backlog of 20,000
                 "max_inflight_messages 100",
                 "log_dest stdout",
                 "log_type error", "log_type warning", "log_type notice", "log_type information"]
        if persistent:
            lines += [f"persistence_location {folder}/", "autosave_interval 0"]
        if users:
            pwfile = folder / "passwd"
            pwfile.touch(mode=0o600)
            for user, password in users.items():
                subprocess.run([MOSQUITTO_PASSWD, "-b", str(pwfile), user, password], check=True,
                               capture_output=True)
            lines.append(f"password_file {pwfile}")
        if tls:
            lines += [f"cafile {tls.ca}", f"certfile {tls.server_cert}", f"keyfile {tls.server_key}",
                      "require_certificate true", "tls_version tlsv1.2"]
        self.conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> Broker:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"mosquitto not listening after {timeout} s:\n{self.log()}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM (a persistent broker saves its sessions) and wait until the port is free."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(HANG_GUARD_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int
    at: float
    """time.time() on arrival."""

    def json(self) -> Any:
        return json.loads(self.payload)

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8")


class Subscriber:
    """A paho client (its own thread) subscribed to ``topics``, recording every message."""

    def __init__(self, broker: Broker, topics: Iterable[str] = ("#",), *, client_id: str | None = None,
                 persistent: bool = False, username: str | None = None, password: str | None = None) -> None:
        self.broker = broker
        self.topics = list(topics)
        self.client = paho.Client(CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"test-{time.monotonic_ns()}",
                                  clean_session=not persistent)
        self.client.reconnect_delay_set(0.05, 0.2)
        if username is not None:
            self.client.username_pw_set(username, password)
        if broker.tls is not None:
            self.client.tls_set(ca_certs=str(broker.tls.ca), certfile=str(broker.tls.client_cert),
                                keyfile=str(broker.tls.client_key))
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.on_message = self._on_message

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            client.subscribe([(t, 1) for t in self.topics])

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain), msg.qos,
                                          time.time()))
            self._cond.notify_all()

    def start(self) -> Subscriber:
        self.client.connect("127.0.0.1", self.broker.port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(HANG_GUARD_S):
            raise AssertionError("test subscriber not subscribed")
        return self

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Subscriber:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def snapshot(self) -> list[Received]:
        with self._cond:
            return list(self.messages)

    def on(self, topic: str) -> list[Received]:
        """Messages on ``topic`` (exact), oldest first."""
        return [m for m in self.snapshot() if m.topic == topic]

    def wait_for(self, what: str, check: Callable[[list[Received]], Any],
                 timeout: float = HANG_GUARD_S) -> Any:
        """Until ``check(all messages so far)`` is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = check(list(self.messages))
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    topics = sorted({m.topic for m in self.messages})
                    raise AssertionError(f"gave up waiting for {what}; "
                                         f"{len(self.messages)} messages on {topics}")
                self._cond.wait(min(remaining, 0.5))


def seqs(messages: Iterable[Received]) -> list[int]:
    """The ``seq`` of every outbox message (events, broadcasts, health), in arrival order."""
    return [doc["seq"] for m in messages if "seq" in (doc := _safe(m))]


def _safe(m: Received) -> dict[str, Any]:
    try:
        doc = m.json()
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}
