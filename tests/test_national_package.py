"""EBDT tar packages and the multipart upload (controller/uplink/national/package.py): every refusal, the
round trips, and fuzzing — hostile input may only ever raise PackageError, and nothing is written to disk."""

from __future__ import annotations

import io
import os
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.uplink.national.package import (
    MAX_EXTENDED_HEADER_BYTES,
    Package,
    PackageError,
    PackageLimits,
    multipart_body,
    package_ebdid,
    package_name,
    read_multipart_file,
    read_package,
    write_package,
)

EBDID = "10432100200000003140101012024061500000017"
EBDB = f"EBDB_{EBDID}.xml"
EBDS = f"EBDS_EBDB_{EBDID}.xml"
XML = b'<?xml version="1.0" encoding="UTF-8"?>\n<EBD><EBDID>' + EBDID.encode() + b"</EBDID></EBD>"
SIG = b"<Signature><SignatureValue>AAAA</SignatureValue></Signature>"
FUZZ = settings(max_examples=250, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ---------------------------------------------------------------------------------------------
# No file is touched while a package is read: an audit hook sees every open() of this process.

_watch: list[list[tuple[str, object]]] = []


def _audit(event: str, args: tuple[object, ...]) -> None:
    if _watch and (event == "open" or event.startswith(("os.", "shutil.", "tempfile."))):
        if event == "open" and str(args[0]).endswith((".py", ".pyc")):
            return  # a lazy import of the standard library
        _watch[-1].append((event, args[:1]))


sys.addaudithook(_audit)


def _no_files(fn: Callable[[], object]) -> object:
    """Run ``fn``; fail if it opened, created or removed any file."""
    _watch.append([])
    try:
        return fn()
    finally:
        seen = _watch.pop()
        assert seen == [], f"file access while reading a package: {seen[:3]}"


def test_the_file_watch_sees_a_write(tmp_path: Path):
    with pytest.raises(AssertionError, match="file access"):
        _no_files(lambda: (tmp_path / "x").write_bytes(b"x"))


@pytest.fixture
def quiet_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Work in an empty directory and check it is still empty afterwards."""
    monkeypatch.chdir(tmp_path)
    before = sorted(os.listdir(tmp_path))
    yield tmp_path
    assert sorted(os.listdir(tmp_path)) == before


# ---------------------------------------------------------------------------------------------
# Building test tars by hand (tarfile as a writer, into memory)


def _reg(name: str, data: bytes = b"x", **pax: str) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    if pax:
        info.pax_headers = dict(pax)
    return info, data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def _header_only(name: str, size: int) -> tuple[tarfile.TarInfo, bytes | None]:
    """A header that declares ``size`` bytes with no data behind it (a tar bomb's promise)."""
    info = tarfile.TarInfo(name)
    info.size = size
    return info, None


def _tar(*members: tuple[tarfile.TarInfo, bytes | None], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def _valid() -> bytes:
    return write_package(EBDID, XML, SIG, {"alert.mp3": b"ID3" + bytes(3000)})


def _refused(data: bytes, code: int, *words: str, limits: PackageLimits | None = None) -> PackageError:
    with pytest.raises(PackageError) as err:
        _no_files(lambda: read_package(data, limits or PackageLimits()))
    assert err.value.result_code == code, err.value.desc
    for word in words:
        assert word in err.value.desc
    assert str(err.value) == err.value.desc
    return err.value


# ---------------------------------------------------------------------------------------------
# Round trips


def test_write_then_read_gives_back_every_part(quiet_dir: Path):
    media = {"alert.mp3": b"ID3" + os.urandom(5000), "tone.wav": b"RIFF" + bytes(100)}
    package = _no_files(lambda: read_package(write_package(EBDID, XML, SIG, media)))
    assert package == Package(ebdid=EBDID, ebdb=XML, signature=SIG, media=media)


def test_write_then_read_without_signature_or_media():
    package = read_package(write_package(EBDID, XML, None))
    assert (package.ebdid, package.ebdb, package.signature, package.media) == (EBDID, XML, None, {})


def test_written_tar_holds_plain_regular_files_in_order():
    with tarfile.open(fileobj=io.BytesIO(_valid()), mode="r:") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [EBDB, EBDS, "alert.mp3"]
    assert all(m.isreg() and m.mode == 0o644 for m in members)


def test_write_refuses_names_that_would_not_read_back():
    with pytest.raises(ValueError, match="digits"):
        write_package("10abc", XML, None)
    for bad in ("../x.mp3", "a/b.mp3", "EBDB_1.xml", "EBDS_EBDB_1.xml", "..", "音频.mp3"):
        with pytest.raises(ValueError, match="media name"):
            write_package(EBDID, XML, None, {bad: b"x"})


def test_member_order_in_the_tar_does_not_matter():
    tar = _tar(_reg("a.mp3", b"aa"), _reg(EBDS, SIG), _reg(EBDB, XML))
    assert read_package(tar) == Package(EBDID, XML, SIG, {"a.mp3": b"aa"})


def test_a_128_character_media_name_round_trips():
    name = "m" * 124 + ".mp3"
    assert read_package(write_package(EBDID, XML, None, {name: b"1"})).media == {name: b"1"}


def test_old_ustar_and_gnu_tars_are_read():
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT):
        assert read_package(_tar(_reg(EBDB, XML), fmt=fmt)).ebdb == XML


def test_package_name_and_its_ebdid():
    assert package_name(EBDID) == f"EBDT_{EBDID}.tar"
    assert package_ebdid(package_name(EBDID)) == EBDID
    assert package_ebdid("EBDT_12x.tar") is None
    assert package_ebdid("../EBDT_1.tar") is None


# ---------------------------------------------------------------------------------------------
# Refusals: forbidden members (5, naming the member)


@pytest.mark.parametrize("name, words", [
    ("../x", ["'../x'", "directory"]),
    ("/etc/x", ["'/etc/x'", "absolute"]),
    ("a/b.mp3", ["'a/b.mp3'", "directory"]),
    (f"./{EBDB}", [f"'./{EBDB}'"]),
    ("..", ["'..'"]),
    (".", ["'.'"]),
    ("a b.mp3", ["'a b.mp3'", "name must be"]),
    ("a;b", ["'a;b'"]),
    ("a\nb", ["'a\\nb'"]),
    ("音频.mp3", ["'音频.mp3'"]),
    ("C:\\x", ["'C:\\\\x'"]),
    ("m" * 129, ["name must be"]),
])
def test_names_that_could_mean_a_path_or_are_odd_are_refused(name: str, words: list[str]):
    _refused(_tar(_reg(EBDB, XML), _reg(name)), 5, *words)


def test_a_nul_in_a_pax_name_is_refused():
    _refused(_tar(_reg(EBDB, XML), _reg("a.mp3", path="a\x00b.mp3")), 5, "'a\\x00b.mp3'")


@pytest.mark.parametrize("kind, word", [
    (tarfile.SYMTYPE, "symbolic link"),
    (tarfile.LNKTYPE, "hard link"),
    (tarfile.CHRTYPE, "character device"),
    (tarfile.BLKTYPE, "block device"),
    (tarfile.FIFOTYPE, "FIFO"),
    (tarfile.DIRTYPE, "directory"),
    (tarfile.CONTTYPE, "contiguous"),
    (b"Z", "type b'Z'"),
])
def test_members_other_than_regular_files_are_refused(kind: bytes, word: str):
    err = _refused(_tar(_reg(EBDB, XML), _special("evil", kind, linkname=EBDB)), 5, "'evil'", word)
    assert "only regular files" in err.desc


def test_a_symlink_named_like_the_ebdb_is_refused():
    _refused(_tar(_special(EBDB, tarfile.SYMTYPE, linkname="/etc/passwd")), 5, "symbolic link", EBDB)


def test_a_hardlink_to_an_outside_path_is_refused():
    _refused(_tar(_reg(EBDB, XML), _special("a.mp3", tarfile.LNKTYPE, linkname="../../etc/shadow")),
             5, "hard link", "'a.mp3'")


def test_an_old_gnu_sparse_member_is_refused_before_its_map_is_read():
    info, _ = _special("s.mp3", tarfile.GNUTYPE_SPARSE)
    _refused(_tar(_reg(EBDB, XML), (info, None), fmt=tarfile.GNU_FORMAT), 5, "sparse", "'s.mp3'")


def test_a_pax_sparse_member_is_refused():
    sparse = _reg("s.mp3", b"\n".join([b"1", b"0", b"1"]) + b"\n", **{"GNU.sparse.major": "1",
                                                                        "GNU.sparse.minor": "0"})
    _refused(_tar(_reg(EBDB, XML), sparse), 5, "sparse")


def test_a_directory_holding_the_ebdb_is_refused():
    _refused(_tar(_special("ebd", tarfile.DIRTYPE), _reg(f"ebd/{EBDB}", XML)), 5, "directory", "'ebd'")


def test_the_same_name_twice_is_refused():
    _refused(_tar(_reg(EBDB, XML), _reg("a.mp3"), _reg("a.mp3")), 5, "twice", "'a.mp3'")


def test_two_ebdb_members_are_refused():
    other = "EBDB_10432100200000003140101012024061500000018.xml"
    _refused(_tar(_reg(EBDB, XML), _reg(other, XML)), 5, "more than one EBDB")


def test_a_signature_for_another_ebd_is_refused():
    _refused(_tar(_reg(EBDB, XML), _reg("EBDS_EBDB_123.xml", SIG)), 5, "'EBDS_EBDB_123.xml'")


def test_an_ebdb_lookalike_name_is_refused():
    _refused(_tar(_reg(EBDB, XML), _reg("EBDB_x.xml", XML)), 5, "'EBDB_x.xml'")


# ---------------------------------------------------------------------------------------------
# Refusals: limits, all judged from the headers (5)


def test_too_many_members():
    members = [_reg(EBDB, XML)] + [_reg(f"m{i}.mp3") for i in range(16)]
    _refused(_tar(*members), 5, "more than 16 members")
    assert len(read_package(_tar(*members[:16])).media) == 15


def test_a_tar_bomb_of_many_members_stops_at_the_limit():
    bomb = _tar(_reg(EBDB, XML), *(_reg(f"m{i}", b"") for i in range(5000)))
    _refused(bomb, 5, "more than 4 members", limits=PackageLimits(max_members=4))


def test_an_oversized_xml_member_is_refused_from_its_header_alone():
    # the header promises 2 MiB; the data is not even there, so reading it would fail differently
    _refused(_tar(_header_only(EBDB, 2 * 1024 * 1024)), 5, f"'{EBDB}'", "XML limit")


def test_an_oversized_signature_is_refused():
    _refused(_tar(_reg(EBDB, XML), _reg(EBDS, b"x" * 2000)), 5, f"'{EBDS}'",
             limits=PackageLimits(max_xml_bytes=1000))


def test_a_huge_declared_media_size_is_refused_from_its_header_alone():
    tar = _tar(_reg(EBDB, XML), _header_only("big.mp3", 10**12))  # pax "size" record: 1 TB
    assert len(tar) < 20_000
    _refused(tar, 5, "'big.mp3'", "media total")


def test_media_sizes_are_limited_in_total():
    tar = _tar(_reg(EBDB, XML), _reg("a.mp3", b"a" * 600), _reg("b.mp3", b"b" * 600))
    _refused(tar, 5, "'b.mp3'", "1200", limits=PackageLimits(max_media_bytes=1000))


def test_the_whole_package_is_limited():
    _refused(_valid(), 5, "package of", limits=PackageLimits(max_package_bytes=1000))


def test_a_large_pax_header_is_refused_before_tarfile_parses_it():
    # CPython 3.11's pax parser is quadratic on long digit runs (CVE-2024-6232)
    digits = "1" * (MAX_EXTENDED_HEADER_BYTES * 4)
    _refused(_tar(_reg(EBDB, XML, comment=digits)), 5, "extended tar header")


def test_a_chain_of_extended_headers_is_refused():
    longname = tarfile.TarInfo("m" * 150)
    raw = longname.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
    chain = raw[:1024] * 10 + raw[1024:]  # ten GNU long-name headers in a row, then the member
    _refused(chain + bytes(1024), 5, "in a row")


# ---------------------------------------------------------------------------------------------
# Refusals: garbage (2) and missing content (3)


def test_no_ebdb_member_is_content_missing():
    _refused(_tar(_reg("a.mp3"), _reg(EBDS, SIG)), 3, "EBDB")
    _refused(_tar(_reg("EBDT_1.tar", _valid())), 3, "EBDB")


def test_an_empty_tar_is_content_missing():
    _refused(_tar(), 3)


@pytest.mark.parametrize("data", [b"", b"hello", b"x" * 600, bytes(100), b"PK\x03\x04" + bytes(1000),
                                  b"\x1f\x8b\x08" + bytes(1000)], ids=["empty", "text", "junk", "short",
                                                                       "zip", "gzip"])
def test_not_a_tar(data: bytes):
    _refused(data, 2)


def test_a_compressed_package_is_not_read():
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        info, data = _reg(EBDB, XML)
        tar.addfile(info, io.BytesIO(data))
    _refused(out.getvalue(), 2)


def test_every_truncation_of_a_valid_tar_is_refused_or_complete():
    full = _valid()
    members_end = 512 * 2 + 512 * 2 + 512 + 512 * 6  # three headers and their data blocks
    for cut in [*range(0, members_end, 97), members_end]:  # no end-of-archive block: cut off somewhere
        _refused(full[:cut], 2)
    for cut in (members_end + 512, len(full)):  # only zero blocks cut away: still whole
        assert read_package(full[:cut]).media == read_package(full).media


def test_a_truncated_member_names_the_member():
    full = _valid()
    _refused(full[:512 * 5 + 100], 2, "'alert.mp3'", "truncated")


def test_garbage_after_a_member_is_refused():
    tar = _tar(_reg(EBDB, XML))
    _refused(tar[:1024] + b"garbage!" * 64 + tar[1024:], 2, "garbage")


def test_a_bad_checksum_is_refused():
    tar = bytearray(_valid())
    tar[0] ^= 0x01
    _refused(bytes(tar), 2)


def test_a_negative_size_is_refused():
    tar = bytearray(_tar(_reg(EBDB, XML)))
    tar[124:136] = b"\xff" * 12  # base-256 -1
    _fix_checksum(tar, 0)
    _refused(bytes(tar), 2, "negative")


# ---------------------------------------------------------------------------------------------
# multipart/form-data


def test_multipart_round_trip(quiet_dir: Path):
    tar = _valid()
    content_type, body = multipart_body(package_name(EBDID), tar)
    assert content_type.startswith("multipart/form-data; boundary=")
    assert _no_files(lambda: read_multipart_file(content_type, body)) == (package_name(EBDID), tar)


def test_multipart_boundaries_are_random():
    assert multipart_body("a.tar", b"x")[0] != multipart_body("a.tar", b"x")[0]


def test_multipart_body_has_the_part_headers_platforms_expect():
    _, body = multipart_body("EBDT_1.tar", b"DATA")
    assert b'Content-Disposition: form-data; name="file"; filename="EBDT_1.tar"\r\n' in body
    assert b"Content-Type: application/octet-stream\r\n\r\nDATA\r\n" in body


def test_multipart_body_refuses_names_that_break_the_header():
    for bad in ('a".tar', "a\r\n.tar", "a\\b"):
        with pytest.raises(ValueError):
            multipart_body(bad, b"x")


def test_a_multipart_body_built_by_httpx_is_read():
    tar = _valid()
    request = httpx.Request("POST", "http://county.example/linkage/access", data={"note": "x"},
                            files={"file": ("EBDT_1.tar", tar, "application/octet-stream")})
    assert read_multipart_file(request.headers["content-type"], request.read()) == ("EBDT_1.tar", tar)


def test_other_parts_are_skipped_and_another_field_can_be_asked_for():
    content_type, body = multipart_body("x.tar", b"X", field="other")
    assert read_multipart_file(content_type, body, field="other") == ("x.tar", b"X")
    with pytest.raises(PackageError) as err:
        read_multipart_file(content_type, body)
    assert (err.value.result_code, err.value.desc) == (2, "multipart body has no part named 'file'")


def test_a_non_ascii_filename_survives():
    content_type, body = multipart_body("广播.tar", b"X")
    assert read_multipart_file(content_type, body) == ("广播.tar", b"X")


@pytest.mark.parametrize("content_type", ["application/octet-stream", "multipart/form-data",
                                          "text/plain; boundary=x", ""])
def test_not_multipart_form_data(content_type: str):
    with pytest.raises(PackageError) as err:
        read_multipart_file(content_type, b"--x\r\n")
    assert err.value.result_code == 2


def test_a_truncated_or_mangled_multipart_body_is_refused():
    content_type, body = multipart_body("x.tar", b"X" * 100)
    for bad in (body[:-10], body[:20], b"junk" + body, body.replace(b"\r\n\r\n", b"\r\n", 1)):
        with pytest.raises(PackageError) as err:
            read_multipart_file(content_type, bad)
        assert err.value.result_code == 2


# ---------------------------------------------------------------------------------------------
# Fuzzing: hostile bytes only ever raise PackageError


def _fix_checksum(buf: bytearray, offset: int) -> None:
    """Recompute a header block's checksum so a mutation gets past tarfile's first check."""
    block = buf[offset:offset + 512]
    if len(block) < 512:
        return
    block[148:156] = b" " * 8
    buf[offset + 148:offset + 156] = b"%06o\0 " % sum(block)


def _only_package_errors(data: bytes) -> Package | None:
    try:
        return read_package(data, PackageLimits(max_package_bytes=1 << 20, max_media_bytes=1 << 19))
    except PackageError as e:
        assert e.result_code in (2, 3, 5)
        assert e.desc
        return None


_VALID_TARS = [_valid(), write_package(EBDID, XML, None),
               _tar(_reg(EBDB, XML, comment="pax"), _reg("m" * 120)),
               _tar(_reg(EBDB, XML), _reg("n" * 110), fmt=tarfile.GNU_FORMAT)]


def _header_offsets(tar: bytes) -> list[int]:
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as reader:
        return [m.offset for m in reader.getmembers()]


_HEADERS = {i: _header_offsets(t) for i, t in enumerate(_VALID_TARS)}


def test_fuzz_random_bytes(quiet_dir: Path):
    @FUZZ
    @given(st.binary(max_size=3000))
    def run(data: bytes) -> None:
        _no_files(lambda: _only_package_errors(data))

    run()


def test_fuzz_random_blocks_with_valid_checksums(quiet_dir: Path):
    @FUZZ
    @given(st.lists(st.binary(min_size=512, max_size=512), min_size=1, max_size=6))
    def run(blocks: list[bytes]) -> None:
        buf = bytearray(b"".join(blocks))
        for offset in range(0, len(buf), 512):
            _fix_checksum(buf, offset)
        _no_files(lambda: _only_package_errors(bytes(buf)))

    run()


def test_fuzz_mutated_valid_tars(quiet_dir: Path):
    @FUZZ
    @given(st.sampled_from(range(len(_VALID_TARS))),
           st.lists(st.tuples(st.integers(0, 6000), st.integers(0, 255)), min_size=1, max_size=12),
           st.one_of(st.none(), st.integers(0, 12000)), st.booleans())
    def run(which: int, edits: list[tuple[int, int]], cut: int | None, fix: bool) -> None:
        buf = bytearray(_VALID_TARS[which])
        for position, value in edits:
            if position < len(buf):
                buf[position] = value
        if fix:  # reach past the checksum into the header fields
            for offset in _HEADERS[which]:
                _fix_checksum(buf, offset)
        data = bytes(buf if cut is None else buf[:cut])
        _no_files(lambda: _only_package_errors(data))

    run()


def test_fuzz_header_fields_of_a_valid_tar(quiet_dir: Path):
    fields = [(0, 100), (100, 8), (124, 12), (156, 1), (157, 100), (257, 8), (345, 155)]

    @FUZZ
    @given(st.sampled_from(fields), st.binary(min_size=1, max_size=155), st.sampled_from([0, 1024]))
    def run(field: tuple[int, int], value: bytes, header: int) -> None:
        buf = bytearray(_VALID_TARS[0])
        start, length = field
        buf[header + start:header + start + length] = value[:length].ljust(length, b"\0")
        _fix_checksum(buf, header)
        _no_files(lambda: _only_package_errors(bytes(buf)))

    run()


def test_fuzz_pax_records(quiet_dir: Path):
    @settings(FUZZ, max_examples=150)
    @given(st.dictionaries(st.sampled_from(["path", "size", "linkpath", "uid", "mtime", "hdrcharset",
                                            "GNU.sparse.size", "comment", "x"]),
                           st.text(max_size=40), max_size=4))
    def run(records: dict[str, str]) -> None:
        try:
            tar = _tar(_reg(EBDB, XML), _reg("a.mp3", b"abc", **records))
        except (ValueError, UnicodeError, tarfile.TarError):
            return  # the writer itself refuses
        _no_files(lambda: _only_package_errors(tar))

    run()
