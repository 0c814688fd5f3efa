"""EBD packages: the ``EBDT_<EBDID>.tar`` a platform POSTs as multipart/form-data, read and written in memory.

The tar comes from the network, so it is treated as hostile: it is opened on a ``BytesIO`` only (never
extracted, nothing is written to disk), and every member's header — type, name, size — is judged
*before* its data is read. Only regular files with a plain one-component name are accepted; links,
directories, devices, FIFOs and sparse files are refused, as is any name that could mean a path.
Sizes are limited from the headers (:class:`PackageLimits`), so a tar that *declares* a huge member
costs nothing to refuse.

Two CPython tarfile weaknesses are closed by a :class:`tarfile.TarInfo` subclass that sees every header
as it is read (``_proc_member``, the hook tarfile's source names for subclasses): pax / GNU long-name
headers are size-capped (3.11's pax parser backtracks quadratically over a long run of digits,
CVE-2024-6232) and may not chain (each one recurses), and sparse members are refused before tarfile
walks their sparse maps (which can fail with errors other than ``TarError``).

Errors carry the EBDResponse ``ResultCode`` the answer should give: 2 parse failed (not a tar,
truncated), 3 content missing (no ``EBDB_*.xml``), 5 other (limits, forbidden members).
"""

from __future__ import annotations

import io
import re
import secrets
import tarfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

MIB = 1024 * 1024

MAX_EXTENDED_HEADER_BYTES = 2048
"""Largest pax / GNU long-name header accepted: a real one holds a short path and a few times (< 300 B)."""
MAX_EXTENDED_RUN = 3
"""Extended headers allowed in a row before one member (tarfile recurses once per header)."""

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_EBDB = re.compile(r"EBDB_([0-9]+)\.xml")
_EBDS = re.compile(r"EBDS_EBDB_([0-9]+)\.xml")
_EBDT = re.compile(r"EBDT_([0-9]+)\.tar")
_EBDID = re.compile(r"[0-9]{1,64}")
_EXTENDED = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
             tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
_KINDS = {tarfile.SYMTYPE: "symbolic link", tarfile.LNKTYPE: "hard link", tarfile.DIRTYPE: "directory",
          tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device", tarfile.FIFOTYPE: "FIFO",
          tarfile.GNUTYPE_SPARSE: "sparse file", tarfile.CONTTYPE: "contiguous file"}


class PackageError(ValueError):
    """A package that cannot be used; ``result_code`` is the EBDResponse code (2, 3 or 5) to answer with."""

    def __init__(self, result_code: int, desc: str) -> None:
        super().__init__(desc)
        self.result_code = result_code
        self.desc = desc


@dataclass(frozen=True)
class PackageLimits:
    """Bounds on an incoming package, all checked from headers before any member data is read."""

    max_package_bytes: int = 64 * MIB
    max_members: int = 16
    max_xml_bytes: int = 1 * MIB
    """Per XML member (the EBDB and its signature)."""
    max_media_bytes: int = 48 * MIB
    """All other members together."""


@dataclass(frozen=True)
class Package:
    """The parts of one EBD package. ``ebdid`` is read from the EBDB member's name (``EBDB_<ebdid>.xml``)."""

    ebdid: str
    ebdb: bytes
    signature: bytes | None
    """``EBDS_EBDB_<ebdid>.xml`` when the package has one."""
    media: dict[str, bytes] = field(default_factory=dict)
    """Every other member by name (audio auxiliaries)."""


def _show(name: str) -> str:
    """A member name fit for an error message (bounded, control characters escaped)."""
    return repr(name[:60] + "…") if len(name) > 60 else repr(name)


class _GuardedTarInfo(tarfile.TarInfo):
    """Judges each raw header as tarfile reads it, before tarfile acts on it (see the module docstring)."""

    def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:  # type: ignore[override]
        run = getattr(archive, "_ebc_extended_run", 0)
        if self.size < 0:
            raise PackageError(2, f"tar header of member {_show(self.name)} has a negative size")
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise PackageError(5, f"member {_show(self.name)}: sparse file refused")
        if self.type in _EXTENDED:
            if self.size > MAX_EXTENDED_HEADER_BYTES:
                raise PackageError(5, f"extended tar header of {self.size} bytes (limit "
                                      f"{MAX_EXTENDED_HEADER_BYTES})")
            if run >= MAX_EXTENDED_RUN:
                raise PackageError(5, f"more than {MAX_EXTENDED_RUN} extended tar headers in a row")
            start = archive.fileobj.tell()
            records = archive.fileobj.read(self.size)
            archive.fileobj.seek(start)
            if b"GNU.sparse" in records:
                raise PackageError(5, "member declared sparse by a pax header: sparse files refused")
            archive._ebc_extended_run = run + 1  # type: ignore[attr-defined]
        else:
            archive._ebc_extended_run = 0  # type: ignore[attr-defined]
        return super()._proc_member(archive)  # type: ignore[misc]


class _GuardedTarFile(tarfile.TarFile):
    tarinfo = _GuardedTarInfo


def _refusal(member: tarfile.TarInfo) -> str | None:
    """Why this member may not be in a package, or None."""
    if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        kind = _KINDS.get(member.type, f"type {member.type!r}")
        return f"member {_show(member.name)}: {kind} refused (only regular files)"
    if member.sparse is not None:
        return f"member {_show(member.name)}: sparse file refused"
    name = member.name
    if name.startswith("/"):
        return f"member {_show(name)}: absolute name refused"
    if "/" in name or "\\" in name:
        return f"member {_show(name)}: name with a directory refused"
    if name in (".", ".."):
        return f"member {_show(name)}: name refused"
    if not _NAME.fullmatch(name):
        return f"member {_show(name)}: name must be 1-128 of A-Z a-z 0-9 _ . -"
    return None


def read_package(data: bytes, limits: PackageLimits = PackageLimits()) -> Package:
    """The EBDB, its signature and media of an ``EBDT_*.tar``; anything else raises :class:`PackageError`."""
    if len(data) > limits.max_package_bytes:
        raise PackageError(5, f"package of {len(data)} bytes (limit {limits.max_package_bytes})")
    if not data:
        raise PackageError(2, "package is empty")
    members: dict[str, bytes] = {}
    media_bytes = 0
    try:
        with _GuardedTarFile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            while (member := tar.next()) is not None:
                if len(members) >= limits.max_members:
                    raise PackageError(5, f"more than {limits.max_members} members")
                if (why := _refusal(member)) is not None:
                    raise PackageError(5, why)
                name, size = member.name, member.size
                if size < 0:
                    raise PackageError(2, f"member {_show(name)}: negative size")
                if name in members:
                    raise PackageError(5, f"member {_show(name)}: appears twice")
                if name.endswith(".xml") and name.startswith(("EBDB_", "EBDS_")):
                    if size > limits.max_xml_bytes:
                        raise PackageError(5, f"member {_show(name)}: {size} bytes (XML limit "
                                              f"{limits.max_xml_bytes})")
                else:
                    media_bytes += size
                    if media_bytes > limits.max_media_bytes:
                        raise PackageError(5, f"member {_show(name)}: media total {media_bytes} bytes "
                                              f"(limit {limits.max_media_bytes})")
                if member.offset_data + size > len(data):
                    raise PackageError(2, f"member {_show(name)}: truncated ({size} bytes declared)")
                reader = tar.extractfile(member)
                body = reader.read() if reader is not None else b""
                if len(body) != size:
                    raise PackageError(2, f"member {_show(name)}: truncated ({size} bytes declared)")
                members[name] = body
            # tarfile takes a bad or cut-off header after the first member for the end of the archive;
            # only an end-of-archive block (zeros) may follow the last member.
            if data[tar.offset:tar.offset + tarfile.BLOCKSIZE] != bytes(tarfile.BLOCKSIZE):
                raise PackageError(2, f"tar is truncated or has garbage after {len(members)} members")
    except PackageError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError, UnicodeError, OverflowError) as e:
        raise PackageError(2, f"not a readable tar: {e}"[:200]) from None
    return _assemble(members)


def _assemble(members: dict[str, bytes]) -> Package:
    """Sort the members into EBDB, signature and media by the prefixes receivers go by."""
    ebdb = [(m.group(1), name) for name in members if (m := _EBDB.fullmatch(name))]
    ebds = [(m.group(1), name) for name in members if (m := _EBDS.fullmatch(name))]
    if not ebdb:
        raise PackageError(3, "no EBDB_<EBDID>.xml member")
    if len(ebdb) > 1:
        raise PackageError(5, f"more than one EBDB member: {', '.join(_show(n) for _, n in ebdb)}")
    ebdid, ebdb_name = ebdb[0]
    for name in members:
        if name.startswith(("EBDB_", "EBDS_")) and name != ebdb_name and name != f"EBDS_EBDB_{ebdid}.xml":
            raise PackageError(5, f"member {_show(name)}: does not belong to EBDB_{ebdid}.xml")
    signature = members.get(ebds[0][1]) if ebds else None
    media = {n: b for n, b in members.items() if not n.startswith(("EBDB_", "EBDS_"))}
    return Package(ebdid=ebdid, ebdb=members[ebdb_name], signature=signature, media=media)


_NO_MEDIA: Mapping[str, bytes] = MappingProxyType({})


def package_name(ebdid: str) -> str:
    """The tar's file name on the wire."""
    return f"EBDT_{ebdid}.tar"


def package_ebdid(filename: str) -> str | None:
    """The EBDID in an ``EBDT_<EBDID>.tar`` file name (to compare with :attr:`Package.ebdid`), else None."""
    m = _EBDT.fullmatch(filename.strip())
    return m.group(1) if m else None


def write_package(ebdid: str, ebdb: bytes, signature: bytes | None,
                  media: Mapping[str, bytes] = _NO_MEDIA) -> bytes:
    """The ``EBDT_<ebdid>.tar`` bytes: EBDB first, then its signature, then media (regular files, 0644)."""
    if not _EBDID.fullmatch(ebdid):
        raise ValueError(f"EBDID must be digits, not {ebdid[:50]!r}")
    files = [(f"EBDB_{ebdid}.xml", ebdb)]
    if signature is not None:
        files.append((f"EBDS_EBDB_{ebdid}.xml", signature))
    for name, body in media.items():
        if not _NAME.fullmatch(name) or name in (".", "..") or name.startswith(("EBDB_", "EBDS_")):
            raise ValueError(f"media name {_show(name)} not allowed in a package")
        files.append((name, body))
    out = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, body in files:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(body), now, 0o644
            tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


# ---------------------------------------------------------------------------------------------
# multipart/form-data: the one part named "file" that carries the tar


def read_multipart_file(content_type: str, body: bytes, field: str = "file") -> tuple[str, bytes]:
    """(filename, data) of the first part named ``field``; python-multipart's streaming parser, in memory.

    Raises :class:`PackageError` (2) when the body is not multipart/form-data or has no such part.
    """
    ctype, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise PackageError(2, f"not multipart/form-data with a boundary: {content_type[:80]!r}")

    parts: list[tuple[dict[str, str], bytearray]] = []
    header: list[bytearray] = [bytearray(), bytearray()]
    ended: list[bool] = []

    def on_part_begin() -> None:
        parts.append(({}, bytearray()))

    def on_header_field(buf: bytes, start: int, end: int) -> None:
        header[0] += buf[start:end]

    def on_header_value(buf: bytes, start: int, end: int) -> None:
        header[1] += buf[start:end]

    def on_header_end() -> None:
        parts[-1][0][header[0].decode("latin-1").strip().lower()] = header[1].decode("latin-1").strip()
        header[0], header[1] = bytearray(), bytearray()

    def on_part_data(buf: bytes, start: int, end: int) -> None:
        parts[-1][1].extend(buf[start:end])

    def on_end() -> None:
        ended.append(True)

    try:
        parser = MultipartParser(boundary, {
            "on_part_begin": on_part_begin, "on_header_field": on_header_field,
            "on_header_value": on_header_value, "on_header_end": on_header_end,
            "on_part_data": on_part_data, "on_end": on_end})
        parser.write(body)
        parser.finalize()
    except (FormParserError, ValueError) as e:
        raise PackageError(2, f"multipart body: {e}"[:200]) from None
    if not ended:
        raise PackageError(2, "multipart body is truncated (no closing boundary)")
    for headers, data in parts:
        disposition, options = parse_options_header(headers.get("content-disposition", ""))
        if disposition == b"form-data" and options.get(b"name") == field.encode("latin-1"):
            return options.get(b"filename", b"").decode("utf-8", "replace"), bytes(data)
    raise PackageError(2, f"multipart body has no part named {field!r}")


def multipart_body(filename: str, data: bytes, field: str = "file") -> tuple[str, bytes]:
    """(Content-Type, body) of a multipart/form-data request carrying ``data`` as the part ``field``."""
    for label, value in (("filename", filename), ("field", field)):
        if any(c in value for c in '"\r\n\\') or not value.isprintable():
            raise ValueError(f"{label} {value[:50]!r} cannot be written in a Content-Disposition")
    boundary = f"ebc-{secrets.token_hex(16)}"
    while f"--{boundary}".encode() in data:  # 2**-128 per try; the check makes it certain
        boundary = f"ebc-{secrets.token_hex(16)}"
    head = (f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n").encode()
    body = head + data + f"\r\n--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", body
