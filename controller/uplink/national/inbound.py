"""What the upper platform posts to this gateway, checked and acted on; every package is answered
with a signed EBDResponse (ResultCode 1, or 2–5 with a ResultDesc naming what was wrong and where).

Checks come before any action, in this order, and the first failure is the answer:

1. the multipart body holds a part ``file`` (2), an ``EBDT_*.tar`` read in memory only with limits
   on members, sizes and names (2 unreadable, 3 no EBDB, 5 forbidden or oversized member);
2. the EBDB XML parses with defusedxml and has what its type needs (2, 3);
3. ``SRC/EBRID`` is the configured upper platform, ``DEST/EBRID`` (if given) is this gateway (5);
4. the signature file verifies over the EBDB bytes with the platform's key of its CertSN (4) —
   heartbeats only when ``verify_heartbeats``;
5. an EBDID answered before gets the same answer again and nothing is replayed (heartbeats, which
   all share one EBDID, are answered afresh each time).

Only then is the request dispatched: EBM play (journalled by the engine before the answer) or
cancel, EBMStateRequest and OMDRequest (answered now, the report follows as its own EBD through
the outbox), ConnectionCheck. Every decision is audited and published as ``national.ebd`` — except
accepted heartbeats, which are only counted (one every few seconds would bury the audit trail).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from controller.broadcast.model import FINAL_STATES, BroadcastState, SourceLevel
from controller.broadcast.ports import BroadcastPort
from controller.config import Config, NationalPlatformSettings
from controller.core.actors import Actor, Role
from controller.core.errors import Conflict, Invalid, NotFound, Unavailable
from controller.core.events import EventBus, PlatformExchange
from controller.storage.journal import Store
from controller.uplink.national import ebd
from controller.uplink.national.codes import parse_ebrid
from controller.uplink.national.ebd import Document, EbdError, Ebm, EbmStateRequest, OmdRequest
from controller.uplink.national.mapping import SOURCE_LEVEL_OF_EBRID_LEVEL, MappingError, ebm_request
from controller.uplink.national.package import (
    Package,
    PackageError,
    PackageLimits,
    read_multipart_file,
    read_package,
)
from controller.uplink.national.signature import SignatureError, Sm2Verifier, parse_signature_file
from controller.uplink.national.store import NationalStore

log = logging.getLogger(__name__)

OMD_TYPES = ("EBRDTInfo", "EBRDTState", "EBRBSInfo", "EBRBSState", "EBMBrdLog")
"""The OMD reports a township broadcast system serves (platform, station and adapter ones are not ours)."""


class Rejected(Exception):
    """A request answered with ResultCode 2–5."""

    def __init__(self, result_code: int, desc: str) -> None:
        super().__init__(desc)
        self.result_code = result_code
        self.desc = desc


@dataclass(frozen=True)
class Answer:
    """What the listener sends back: the EBDResponse package (HTTP 200 whatever its ResultCode)."""

    result_code: int
    desc: str
    package: bytes
    broadcast_id: str | None = None


Respond = Callable[[str | None, int, str], bytes]
"""(the request's EBDID if known, ResultCode, ResultDesc) → the signed EBDResponse package."""
StoreAudio = Callable[[bytes], str]
"""A recording (WAV or MP3 bytes) → the clip id to play it by; ValueError says what is wrong with it."""
Followup = Callable[[str, OmdRequest | EbmStateRequest, str], None]
"""(the request's EBDID, the request, its EBMID's broadcast id or "") → queue the report it asks for."""


class NationalInbound:
    """Checks and dispatches one posted package at a time (callers may run several concurrently)."""

    def __init__(self, cfg: Config, settings: NationalPlatformSettings, *, journal: Store,
                 store: NationalStore, engine: BroadcastPort, bus: EventBus, store_audio: StoreAudio,
                 verifiers: dict[str, Sm2Verifier], respond: Respond, followup: Followup,
                 broadcast_state: Callable[[str], BroadcastState | None]) -> None:
        self.cfg = cfg
        self.settings = settings
        self.journal = journal
        self.store = store
        self.engine = engine
        self.bus = bus
        self.store_audio = store_audio
        self.verifiers = verifiers
        self.respond = respond
        self.followup = followup
        self.broadcast_state = broadcast_state
        self.limits = PackageLimits(max_package_bytes=int(settings.listen.max_package_mb * 1024 * 1024),
                                    max_members=settings.listen.max_members,
                                    max_media_bytes=int(settings.listen.max_package_mb * 1024 * 1024))
        self.upper_level = SOURCE_LEVEL_OF_EBRID_LEVEL.get(parse_ebrid(settings.upper.ebrid).level,
                                                            SourceLevel.COUNTY)
        self.heartbeats = 0
        """Heartbeats answered since start (they are not audited one by one)."""
        self.submitting: tuple[str, str] | None = None
        """(EBMID, EBDID) while an EBM's broadcast is being submitted, so its first report carries it."""
        self._lock = asyncio.Lock()  # one dispatch at a time: duplicates are seen, EBMIDs linked in order

    async def handle(self, content_type: str, body: bytes, peer: str) -> Answer:
        """Check, act, answer; never raises for anything the platform sent."""
        ebdid: str | None = None
        related: str | None = None
        ebd_type = "?"
        src = peer
        try:
            package = await asyncio.to_thread(self._read, content_type, body)
            ebdid = package.ebdid
            document = ebd.parse_ebd(package.ebdb)
            ebdid, ebd_type, src = document.header.ebdid, document.header.ebd_type, document.header.src_ebrid
            related = document.header.related_ebdid
            if document.header.ebdid != package.ebdid:
                raise Rejected(2, f"EBD/EBDID {document.header.ebdid} is not the EBDID "
                                  f"{package.ebdid} of its file name EBDB_{package.ebdid}.xml")
            self._check_peers(document)
            await asyncio.to_thread(self._check_signature, document, package)
            if isinstance(document.body, ebd.ConnectionCheck):
                # Heartbeats all carry one EBDID ("01" + EBRID + zeros): answer each afresh, and keep
                # them out of the audit trail (one every few seconds); refusals are audited below.
                self.heartbeats += 1
                answer = await asyncio.to_thread(self.respond, ebdid, 1, "connection ok")
                return Answer(1, "connection ok", answer)
            async with self._lock:
                previous = self.store.seen(ebdid)
                if previous is not None:
                    self._audit(ebd_type, ebdid, 1, "duplicate EBDID: answered again, not replayed", src,
                                None, document.header.related_ebdid)
                    return Answer(1, "duplicate", previous)
                code, desc, broadcast_id = await self._dispatch(document, package)
                answer = await asyncio.to_thread(self.respond, ebdid, code, desc)
                self.store.remember(ebdid, ebd_type, code, answer)
        except (PackageError, EbdError, MappingError, Rejected) as exc:
            code = exc.result_code
            desc = str(getattr(exc, "desc", exc))
            answer = await asyncio.to_thread(self.respond, ebdid, code, desc)
            self._audit(ebd_type, ebdid, code, desc, src, None, related)
            return Answer(code, desc, answer)
        except Exception as exc:  # a bug must still be answered and audited, never a 500 with no EBD
            log.exception("handling an EBD from %s failed", peer)
            code, desc = 5, f"internal error handling {ebd_type}: {type(exc).__name__}"
            self._audit(ebd_type, ebdid, code, desc, src, None, related)
            return Answer(code, desc, await asyncio.to_thread(self.respond, ebdid, code, desc))
        self._audit(ebd_type, ebdid, code, desc, src, broadcast_id, related)
        return Answer(code, desc, answer, broadcast_id)

    # -- checks ------------------------------------------------------------------------------------

    def _read(self, content_type: str, body: bytes) -> Package:
        if not content_type.lower().startswith("multipart/form-data"):
            raise Rejected(2, f"Content-Type {content_type[:60] or '(none)'}: expected multipart/form-data "
                              f"with an EBDT_*.tar part named 'file'")
        filename, data = read_multipart_file(content_type, body)
        package = read_package(data, self.limits)
        if filename and filename != f"EBDT_{package.ebdid}.tar":
            raise Rejected(2, f"file name {filename[:80]} does not match its EBDB_{package.ebdid}.xml")
        return package

    def _check_peers(self, document: Document) -> None:
        header = document.header
        if header.src_ebrid != self.settings.upper.ebrid:
            raise Rejected(5, f"EBD/SRC/EBRID {header.src_ebrid[:30]} is not the registered upper platform")
        if header.dest_ebrid and header.dest_ebrid != self.cfg.gateway.ebrid:
            raise Rejected(5, f"EBD/DEST/EBRID {header.dest_ebrid[:30]} is not this gateway "
                              f"({self.cfg.gateway.ebrid})")

    def _check_signature(self, document: Document, package: Package) -> None:
        heartbeat = isinstance(document.body, ebd.ConnectionCheck)
        if heartbeat and not self.settings.verify_heartbeats:
            return
        if package.signature is None:
            raise Rejected(4, f"EBDS_EBDB_{package.ebdid}.xml missing: the package is not signed")
        try:
            sig = parse_signature_file(package.signature)
        except SignatureError as exc:
            raise Rejected(4, f"EBDS_EBDB_{package.ebdid}.xml: {exc}") from None
        if sig.ebdid is not None and sig.ebdid != package.ebdid:
            raise Rejected(4, f"Signature/RelatedEBD/EBDID {sig.ebdid[:45]} is not this package's EBDID")
        verifier = self.verifiers.get(sig.cert_sn)
        if verifier is None:
            raise Rejected(4, f"Signature CertSN {sig.cert_sn[:64]} is not a key of the upper platform")
        if not verifier.verify(sig.value, package.ebdb):
            raise Rejected(4, f"Signature/SignatureValue does not verify over EBDB_{package.ebdid}.xml "
                              f"with CertSN {sig.cert_sn[:64]}")

    # -- dispatch ----------------------------------------------------------------------------------

    async def _dispatch(self, document: Document, package: Package) -> tuple[int, str, str | None]:
        body = document.body
        if isinstance(body, Ebm):
            if body.msg_type == 2:
                return await self._cancel(body)
            return await self._play(document, body, package)
        if isinstance(body, EbmStateRequest):
            broadcast_id = self.store.broadcast_of(body.ebmid)
            if broadcast_id is None:
                raise Rejected(5, f"EBMStateRequest/EBM/EBMID {body.ebmid[:40]} is not known to this gateway")
            self.followup(document.header.ebdid, body, broadcast_id)
            return 1, "EBMStateResponse follows", broadcast_id
        if isinstance(body, OmdRequest):
            if body.omd_type not in OMD_TYPES:
                raise Rejected(5, f"OMDRequest/OMDType {body.omd_type[:40]} is not served by a township "
                                  f"broadcast system (served: {', '.join(OMD_TYPES)})")
            self.followup(document.header.ebdid, body, "")
            return 1, f"{body.omd_type} follows", None
        if isinstance(body, ebd.EbdResponse):
            return 1, "response noted", None
        raise Rejected(5, f"EBD/EBDType {document.header.ebd_type[:40]} is not handled by a township "
                          f"broadcast system")

    async def _play(self, document: Document, ebm: Ebm, package: Package) -> tuple[int, str, str | None]:
        existing = self.store.broadcast_of(ebm.ebmid)
        if existing is not None:
            return 1, f"EBMID already received as broadcast {existing}: not played again", existing
        has_audio = any(aux.type in self.settings.auxiliary_types for aux in ebm.auxiliaries)
        # Every rule is checked before an attachment is kept: a refused EBM leaves nothing on disk.
        request = ebm_request(ebm, self.cfg, self.settings, source_level=self.upper_level,
                              audio_id="pending-attachment" if has_audio else None)
        if has_audio:
            audio_id = await asyncio.to_thread(self._auxiliary_audio, ebm, package)
            request = request.model_copy(update={"audio_id": audio_id})
        actor = Actor(name=f"platform:{document.header.src_ebrid}", role=Role.OPERATOR, via="national")
        self.submitting = (ebm.ebmid, document.header.ebdid)
        try:
            broadcast_id = await self.engine.submit(request, actor)
        except (Invalid, ValueError) as exc:
            raise Rejected(5, f"EBM not accepted: {exc}") from None
        except (Unavailable, Conflict) as exc:
            raise Rejected(5, f"gateway cannot play now: {exc}") from None
        finally:
            self.submitting = None
        self.store.link_ebm(ebm.ebmid, broadcast_id, document.header.ebdid)
        return 1, f"accepted as broadcast {broadcast_id}", broadcast_id

    def _auxiliary_audio(self, ebm: Ebm, package: Package) -> str:
        """The first Auxiliary of a known audio type, stored as an uploaded clip (checked like one)."""
        for aux in ebm.auxiliaries:
            kind = self.settings.auxiliary_types.get(aux.type)
            if kind is None:
                continue
            data = package.media.get(aux.desc)
            if data is None:
                raise Rejected(3, f"EBM/MsgContent/Auxiliary/AuxiliaryDesc {aux.desc[:80]} is not in the "
                                  f"package")
            if aux.size is not None and aux.size != len(data):
                raise Rejected(2, f"EBM/MsgContent/Auxiliary/Size {aux.size} is not the size of "
                                  f"{aux.desc[:80]} ({len(data)} bytes)")
            try:
                return self.store_audio(data)
            except ValueError as exc:
                raise Rejected(2, f"Auxiliary {aux.desc[:80]} ({kind}): {exc}") from None
        raise Rejected(3, "EBM/MsgContent/Auxiliary: no attachment of a known AuxiliaryType")

    async def _cancel(self, ebm: Ebm) -> tuple[int, str, str | None]:
        ebmid = ebm.related_ebmid or ebm.ebmid
        broadcast_id = self.store.broadcast_of(ebmid) or self.store.broadcast_of(ebm.ebmid)
        if broadcast_id is None:
            raise Rejected(5, f"EBM/RelatedInfo/EBMID {ebmid[:40]}: no broadcast of that EBMID to cancel")
        state = self.broadcast_state(broadcast_id)
        if state in FINAL_STATES:
            return 1, f"broadcast {broadcast_id} had already ended ({state.name.lower()})", broadcast_id
        actor = Actor(name=f"platform:{self.settings.upper.ebrid}", role=Role.OPERATOR, via="national")
        try:
            cancelled = await self.engine.cancel(broadcast_id, actor)
        except NotFound:
            raise Rejected(5, f"broadcast {broadcast_id} of EBMID {ebmid[:40]} no longer exists") from None
        if not cancelled:
            state = self.broadcast_state(broadcast_id)
            ending = state.name.lower() if state else "?"
            return 1, f"broadcast {broadcast_id} was already ending ({ending})", broadcast_id
        return 1, f"broadcast {broadcast_id} cancelled", broadcast_id

    # -- records -----------------------------------------------------------------------------------

    def _audit(self, ebd_type: str, ebdid: str | None, code: int, desc: str, src: str,
               broadcast_id: str | None, related: str | None = None) -> None:
        actor = Actor(name=f"platform:{src}"[:80], via="national")
        details: dict[str, Any] = {"ebd_type": ebd_type, "result_code": code, "result_desc": desc}
        if broadcast_id:
            details["broadcast_id"] = broadcast_id
        try:
            self.journal.audit(actor, f"national.{ebd_type}"[:64], ebdid or "", details)
        except Exception:
            log.exception("cannot audit the EBD %s", ebdid)
        self.bus.publish(PlatformExchange(direction="in", ebd_type=ebd_type, ebdid=ebdid or "",
                                          related_ebdid=related, result_code=code, result_desc=desc, peer=src,
                                          broadcast_id=broadcast_id))

