"""SM2-over-SM3 signatures and the EBDS signature file (controller/uplink/national/signature.py).

Cross-checked three ways: gmssl's own ``sign_with_sm3``/``verify_with_sm3`` (default user id), the
county-command verifier in controller/uplink/signing.py, and fixtures made with OpenSSL 3.0
(``openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:SM2``; ``openssl dgst -sm3 -sign key.pem
-sigopt distid:<id>``) — the only independent implementation of a *non-default* user id at hand.
"""

from __future__ import annotations

import base64
import contextlib
import re
import shutil
import subprocess
from pathlib import Path
from xml.sax.saxutils import escape

import pytest
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from gmssl import sm2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.uplink.national import signature as sigmod
from controller.uplink.national.signature import (
    DEFAULT_USER_ID,
    KeyFormatError,
    SignatureError,
    SignatureFile,
    Sm2Verifier,
    SoftwareSm2Signer,
    build_signature_file,
    generate_keypair,
    parse_signature_file,
)
from controller.uplink.signing import load_public_key

EBDID = "10" + "53201020010000314010101" + "2024050100000001"
EBDB = (f'<?xml version="1.0" encoding="UTF-8"?>\n<EBD><EBDVersion>1</EBDVersion><EBDID>{EBDID}</EBDID>'
        f'</EBD>').encode()

# -- OpenSSL 3.0.19 fixtures (a throwaway test key) ---------------------------------------------------
OSSL_PKCS8 = """-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqBHM9VAYItBG0wawIBAQQgWNCX4tYhuNlm/Una
P+mocSlAnp2o6jPW2GMJyXuvKk2hRANCAAT3gi7ss+4naMs2UVq1ey+3LCo8h1/L
dqNTV493ohKKxuDi0pAyF7Zv4l0LCa69wh6u1tBFlNAQfSubYABY9hhJ
-----END PRIVATE KEY-----
"""
OSSL_SEC1 = """-----BEGIN SM2 PRIVATE KEY-----
MHcCAQEEIFjQl+LWIbjZZv1J2j/pqHEpQJ6dqOoz1thjCcl7rypNoAoGCCqBHM9V
AYItoUQDQgAE94Iu7LPuJ2jLNlFatXsvtywqPIdfy3ajU1ePd6ISisbg4tKQMhe2
b+JdCwmuvcIertbQRZTQEH0rm2AAWPYYSQ==
-----END SM2 PRIVATE KEY-----
"""
OSSL_PUBLIC = """-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoEcz1UBgi0DQgAE94Iu7LPuJ2jLNlFatXsvtywqPIdf
y3ajU1ePd6ISisbg4tKQMhe2b+JdCwmuvcIertbQRZTQEH0rm2AAWPYYSQ==
-----END PUBLIC KEY-----
"""
OSSL_PRIVATE_HEX = "58d097e2d621b8d966fd49da3fe9a87129409e9da8ea33d6d86309c97baf2a4d"
OSSL_POINT_HEX = ("f7822eecb3ee2768cb36515ab57b2fb72c2a3c875fcb76a353578f77a2128ac6"
                  "e0e2d2903217b66fe25d0b09aebdc21eaed6d04594d0107d2b9b600058f61849")
OSSL_MESSAGE = b"hello EBD"
OSSL_SIG_DEFAULT_ID = bytes.fromhex(  # DER, distid:1234567812345678
    "304502201ac9182525d5cc01d5b3155273ce27424bb0396c15c4c698f3abf35786c6068a022100d53f7dd539d7428a"
    "1631fd8c526f433263eaef095a0dccf3be6d635d84740e2b")
OSSL_SIG_CUSTOM_ID = bytes.fromhex(  # DER, distid:ebc-test-id
    "304402206efc8a78895c80b2c4148e9a40f0b8231394c3ca42904a8fa5188284e43ac64f0220465b0288d68e9fbf630a"
    "a9d0b4d1f58e0ccf88f52d52284a3984a4ab607e20f4")
P256_PKCS8 = """-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgcM4GmaiEvqrpgmqs
L2VK7jgrYGgDY+mf4DMv1SXMXL2hRANCAAQH8Q2AB887mc5IG5vfCzYwFTLiLS6X
ncfHHh+K/I6fUZ7r2rmEKgLFOXZxXpq4xq3yJ5+WX2O6+3yWMNWON9bt
-----END PRIVATE KEY-----
"""


@pytest.fixture(scope="module")
def keypair() -> tuple[str, str]:
    return generate_keypair()


def der_to_rs(der: bytes) -> bytes:
    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def gmssl_crypt(private_hex: str | None, public_hex: str) -> sm2.CryptSM2:
    crypt = sm2.CryptSM2(private_key=private_hex, public_key="")
    crypt.public_key = public_hex  # around gmssl's lstrip("04") on the key
    return crypt


# -- sign / verify ----------------------------------------------------------------------------------


def test_generated_keypair_is_consistent(keypair):
    private, public = keypair
    assert re.fullmatch(r"[0-9a-f]{64}", private) and re.fullmatch(r"[0-9a-f]{128}", public)
    assert SoftwareSm2Signer(private, "SN").public_key_hex == public
    load_public_key("sm2", public)  # on the curve
    assert generate_keypair()[0] != private


@pytest.mark.parametrize("user_id", [DEFAULT_USER_ID, "ebc-township-320102001", ""])
def test_sign_verify_round_trip(keypair, user_id):
    private, public = keypair
    signer = SoftwareSm2Signer(private, "SN-1", user_id=user_id)
    verifier = Sm2Verifier(public, user_id=user_id)
    signature = signer.sign(EBDB)
    assert len(signature) == 64
    assert verifier.verify(signature, EBDB)
    assert signer.sign(EBDB) != signature  # a fresh nonce each time
    assert not verifier.verify(signature, EBDB + b" ")  # tampered message
    assert not verifier.verify(signature, EBDB.replace(b"<EBDVersion>1", b"<EBDVersion>2"))
    tampered = bytearray(signature)
    tampered[40] ^= 1
    assert not verifier.verify(bytes(tampered), EBDB)


def test_wrong_user_id_fails(keypair):
    private, public = keypair
    signature = SoftwareSm2Signer(private, "SN", user_id="ebc-a").sign(EBDB)
    assert Sm2Verifier(public, user_id="ebc-a").verify(signature, EBDB)
    assert not Sm2Verifier(public, user_id="ebc-b").verify(signature, EBDB)
    assert not Sm2Verifier(public).verify(signature, EBDB)
    assert not Sm2Verifier(public, user_id="ebc-a").verify(SoftwareSm2Signer(private, "SN").sign(EBDB), EBDB)


def test_wrong_key_fails(keypair):
    private, _ = keypair
    _, other_public = generate_keypair()
    assert not Sm2Verifier(other_public).verify(SoftwareSm2Signer(private, "SN").sign(EBDB), EBDB)


def test_default_id_matches_gmssl_both_ways(keypair):
    private, public = keypair
    ours = SoftwareSm2Signer(private, "SN").sign(EBDB)
    assert gmssl_crypt(None, public).verify_with_sm3(ours.hex(), EBDB)
    theirs = gmssl_crypt(private, public).sign_with_sm3(EBDB)
    assert Sm2Verifier(public).verify(bytes.fromhex(theirs), EBDB)
    assert not Sm2Verifier(public, user_id="other").verify(bytes.fromhex(theirs), EBDB)
    # and the county-command verifier (same default id, its own code path) agrees
    assert load_public_key("sm2", public).verify(ours, EBDB)


def test_openssl_keys_and_signatures():
    for pem in (OSSL_PKCS8, OSSL_SEC1, OSSL_SEC1.replace("SM2 PRIVATE", "EC PRIVATE"), OSSL_PRIVATE_HEX):
        assert SoftwareSm2Signer(pem, "SN").public_key_hex == OSSL_POINT_HEX
    default, custom = Sm2Verifier(OSSL_PUBLIC), Sm2Verifier(OSSL_PUBLIC, user_id="ebc-test-id")
    assert default.public_key_hex == OSSL_POINT_HEX
    assert default.verify(OSSL_SIG_DEFAULT_ID, OSSL_MESSAGE)
    assert custom.verify(OSSL_SIG_CUSTOM_ID, OSSL_MESSAGE)
    assert not default.verify(OSSL_SIG_CUSTOM_ID, OSSL_MESSAGE)
    assert not custom.verify(OSSL_SIG_DEFAULT_ID, OSSL_MESSAGE)
    assert not custom.verify(OSSL_SIG_CUSTOM_ID, OSSL_MESSAGE + b"!")


def openssl_has_distid() -> bool:
    if shutil.which("openssl") is None:
        return False
    out = subprocess.run(["openssl", "version"], capture_output=True, text=True, check=False).stdout
    return out.startswith("OpenSSL 3")


@pytest.mark.skipif(not openssl_has_distid(), reason="needs the OpenSSL 3 command line")
def test_openssl_verifies_our_custom_id_signature(tmp_path: Path):
    signature = SoftwareSm2Signer(OSSL_PKCS8, "SN", user_id="ebc-test-id").sign(EBDB)
    (tmp_path / "pub.pem").write_text(OSSL_PUBLIC)
    (tmp_path / "msg").write_bytes(EBDB)
    (tmp_path / "sig").write_bytes(encode_dss_signature(*map(lambda b: int.from_bytes(b, "big"),
                                                              (signature[:32], signature[32:]))))

    def check(distid: str) -> bool:
        return subprocess.run(["openssl", "dgst", "-sm3", "-verify", "pub.pem", "-sigopt", f"distid:{distid}",
                               "-signature", "sig", "msg"], cwd=tmp_path, capture_output=True,
                              check=False).returncode == 0

    assert check("ebc-test-id")
    assert not check(DEFAULT_USER_ID)


def test_der_and_rs_are_both_accepted(keypair):
    private, public = keypair
    rs = SoftwareSm2Signer(private, "SN").sign(EBDB)
    der = encode_dss_signature(int.from_bytes(rs[:32], "big"), int.from_bytes(rs[32:], "big"))
    verifier = Sm2Verifier(public)
    assert verifier.verify(rs, EBDB) and verifier.verify(der, EBDB)
    assert Sm2Verifier(OSSL_PUBLIC).verify(der_to_rs(OSSL_SIG_DEFAULT_ID), OSSL_MESSAGE)


@pytest.mark.parametrize("bad", [b"", b"\x00" * 64, b"\xff" * 64, b"\x30\x03\x02\x01", b"x" * 70,
                                 "not bytes", None])
def test_verify_never_raises(keypair, bad):
    assert Sm2Verifier(keypair[1]).verify(bad, EBDB) is False  # type: ignore[arg-type]
    assert Sm2Verifier(keypair[1]).verify(b"\x01" * 64, bad) is False  # type: ignore[arg-type]


def test_sm3_fallback_to_gmssl_gives_the_same_signatures(keypair, monkeypatch):
    private, public = keypair
    signature = SoftwareSm2Signer(private, "SN", user_id="x").sign(EBDB)

    def no_sm3(name: str, data: bytes = b"") -> None:
        raise ValueError(f"unsupported hash type {name}")

    monkeypatch.setattr(sigmod.hashlib, "new", no_sm3)
    assert Sm2Verifier(public, user_id="x").verify(signature, EBDB)
    assert Sm2Verifier(OSSL_PUBLIC, user_id="ebc-test-id").verify(OSSL_SIG_CUSTOM_ID, OSSL_MESSAGE)


def sec1_with_other_scalar() -> str:
    """The OpenSSL SEC1 key with its scalar replaced: the embedded public key no longer matches."""
    body = "".join(OSSL_SEC1.splitlines()[1:-1])
    der = bytearray(base64.b64decode(body))
    der[7:39] = bytes.fromhex("11" * 32)
    return "-----BEGIN EC PRIVATE KEY-----\n" + base64.b64encode(bytes(der)).decode() + \
        "\n-----END EC PRIVATE KEY-----\n"


N = int(sm2.default_ecc_table["n"], 16)


@pytest.mark.parametrize(("key", "message"), [
    ("abcd", "64 hex digits"),
    ("zz" * 32, "64 hex digits"),
    ("0" * 64, "out of range"),
    (f"{N - 1:064x}", "out of range"),
    (OSSL_PUBLIC, "found 'PUBLIC KEY'"),
    ("-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIHs\n-----END ENCRYPTED PRIVATE KEY-----", "encrypted"),
    ("-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----", "not valid base64"),
    ("-----BEGIN PRIVATE KEY-----\nMAMCAQA=\n-----END PRIVATE KEY-----", "not a PKCS#8 private key"),
    (OSSL_PKCS8.replace("BHM9VAYIt", "BHM9VAYIu"), "not SM2"),
    (P256_PKCS8, re.escape("curve 1.2.840.10045.3.1.7, not SM2")),
    (OSSL_SEC1.replace("MHcCAQEE", "MHcCAQIE"), "ECPrivateKey version 1"),
    (sec1_with_other_scalar(), "does not belong to its private key"),
])
def test_private_key_errors_say_what_is_wrong(key, message):
    with pytest.raises(KeyFormatError, match=message):
        SoftwareSm2Signer(key, "SN")


def test_verifier_key_errors():
    with pytest.raises(KeyFormatError, match="never the private one"):
        Sm2Verifier(OSSL_PKCS8)
    with pytest.raises(KeyFormatError, match="not a point on the SM2 curve"):
        Sm2Verifier("01" * 64)
    with pytest.raises(ValueError, match="user id"):
        Sm2Verifier(OSSL_PUBLIC, user_id="x" * 9000)


def test_signer_repr_hides_the_key(keypair):
    assert keypair[0] not in repr(SoftwareSm2Signer(keypair[0], "SN-7"))


# -- the signature file -----------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["new", "old"])
@pytest.mark.parametrize("value_encoding", ["rs", "der"])
@pytest.mark.parametrize("text_encoding", ["base64", "hex"])
def test_signature_file_round_trip(keypair, form, value_encoding, text_encoding):
    private, public = keypair
    data = build_signature_file(EBDID, SoftwareSm2Signer(private, "CERT-0001"), EBDB, form=form,
                                value_encoding=value_encoding, text_encoding=text_encoding)
    assert data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<Signature>')
    parsed = parse_signature_file(data)
    assert (parsed.form, parsed.ebdid, parsed.cert_sn) == (form, EBDID, "CERT-0001")
    assert len(parsed.value) == 64 if value_encoding == "rs" else parsed.value[0] == 0x30
    assert Sm2Verifier(public).verify(parsed.value, EBDB)
    assert not Sm2Verifier(public).verify(parsed.value, EBDB[:-1])
    if form == "new":
        assert b"<SignatureAlgorithm>SM2-SM3</SignatureAlgorithm>" in data and b"SignatureCert" not in data
    else:
        assert b"<SignatureCert><CertType" in data and b"<DigestAlgorithm>SM3</DigestAlgorithm>" in data


def test_build_checks_its_inputs(keypair):
    signer = SoftwareSm2Signer(keypair[0], "SN")
    with pytest.raises(ValueError, match="41 digits"):
        build_signature_file(EBDID[:-1], signer, EBDB)

    class Broken:
        cert_sn = "SN"

        def sign(self, data: bytes) -> bytes:
            return b"\x01" * 70

    with pytest.raises(SignatureError, match="70 bytes"):
        build_signature_file(EBDID, Broken(), EBDB)


OLD_FORM_BY_HAND = f"""<?xml version="1.0" encoding="UTF-8"?>
<Signature>
  <Version>1</Version>
  <RelatedEBD>
    <EBDID>{EBDID}</EBDID>
  </RelatedEBD>
  <SignatureCert>
    <CertType>01</CertType>
    <IssuerID>CA-0001</IssuerID>
    <CertSN> 0A1B2C3D </CertSN>
  </SignatureCert>
  <SignatureTime>2024-05-01 10:00:00</SignatureTime>
  <DigestAlgorithm>SM3</DigestAlgorithm>
  <SignatureAlgorithm>SM2</SignatureAlgorithm>
  <SignatureValue>
    {base64.b64encode(OSSL_SIG_DEFAULT_ID).decode()[:40]}
    {base64.b64encode(OSSL_SIG_DEFAULT_ID).decode()[40:]}
  </SignatureValue>
</Signature>
""".encode()

NEW_FORM_BY_HAND = (f"<Signature><Version>1</Version><RelatedEBD><EBDID>{EBDID}</EBDID></RelatedEBD>"
                    f"<CertSN>7F</CertSN><SignatureAlgorithm>SM2-SM3</SignatureAlgorithm>"
                    f"<SignatureValue>{der_to_rs(OSSL_SIG_DEFAULT_ID).hex().upper()}</SignatureValue>"
                    f"</Signature>").encode()


def test_hand_written_files_parse_and_verify():
    old = parse_signature_file(OLD_FORM_BY_HAND)
    assert old == SignatureFile(form="old", ebdid=EBDID, cert_sn="0A1B2C3D", value=OSSL_SIG_DEFAULT_ID)
    assert Sm2Verifier(OSSL_PUBLIC).verify(old.value, OSSL_MESSAGE)
    new = parse_signature_file(NEW_FORM_BY_HAND)
    assert new == SignatureFile(form="new", ebdid=EBDID, cert_sn="7F", value=der_to_rs(OSSL_SIG_DEFAULT_ID))
    assert Sm2Verifier(OSSL_PUBLIC).verify(new.value, OSSL_MESSAGE)
    # no RelatedEBD: the caller learns there is none
    bare = re.sub(rb"<RelatedEBD>.*</RelatedEBD>", b"", NEW_FORM_BY_HAND)
    assert parse_signature_file(bare).ebdid is None


def new_form(**parts: str) -> bytes:
    fields = {"Version": "<Version>1</Version>",
              "RelatedEBD": f"<RelatedEBD><EBDID>{EBDID}</EBDID></RelatedEBD>",
              "CertSN": "<CertSN>7F</CertSN>",
              "SignatureAlgorithm": "<SignatureAlgorithm>SM2-SM3</SignatureAlgorithm>",
              "SignatureValue": f"<SignatureValue>{base64.b64encode(b'1' * 64).decode()}</SignatureValue>"}
    fields.update(parts)
    return ("<Signature>" + "".join(fields.values()) + "</Signature>").encode()


@pytest.mark.parametrize(("data", "message"), [
    (b"", "Signature: not well-formed XML"),
    (b"\x00\xff garbage", "Signature: not well-formed XML"),
    (b"<Signature><CertSN>1</CertSN>", "Signature: not well-formed XML"),
    (b"<EBD/>", "the root element is <EBD>, not <Signature>"),
    (new_form(SignatureValue=""), "Signature/SignatureValue is missing"),
    (new_form(SignatureValue="<SignatureValue> </SignatureValue>"), "Signature/SignatureValue is empty"),
    (new_form(SignatureValue="<SignatureValue>not*base64!</SignatureValue>"),
     "Signature/SignatureValue is not base64 or hex"),
    (new_form(SignatureValue="<SignatureValue>QUJD</SignatureValue>"),  # base64 of b"ABC"
     "Signature/SignatureValue is 3 bytes: neither"),
    (new_form(SignatureValue="<SignatureValue>AA==</SignatureValue><SignatureValue>AA==</SignatureValue>"),
     "Signature/SignatureValue appears 2 times"),
    (new_form(CertSN=""), "Signature/CertSN is missing"),
    (new_form(RelatedEBD="<RelatedEBD/>"), "Signature/RelatedEBD/EBDID is missing"),
    (new_form(RelatedEBD="<RelatedEBD><EBDID>123</EBDID></RelatedEBD>"),
     "Signature/RelatedEBD/EBDID '123' is not a 41-digit EBDID"),
    (new_form(SignatureAlgorithm="<SignatureAlgorithm>RSA-SHA256</SignatureAlgorithm>"),
     "Signature/SignatureAlgorithm 'RSA-SHA256' is not SM2"),
    (OLD_FORM_BY_HAND.replace(b"<DigestAlgorithm>SM3", b"<DigestAlgorithm>SHA1"),
     "Signature/DigestAlgorithm 'SHA1' is not SM3"),
    (re.sub(rb"<CertSN>.*</CertSN>", b"", OLD_FORM_BY_HAND), "Signature/SignatureCert/CertSN is missing"),
    (b'<?xml version="1.0"?><!DOCTYPE s [<!ENTITY a "aaaa">]><Signature>&a;</Signature>',
     "Signature: not well-formed XML"),
])
def test_malformed_files_name_the_element(data, message):
    with pytest.raises(SignatureError, match=re.escape(message)):
        parse_signature_file(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_random_bytes_only_raise_signature_error(data):
    with contextlib.suppress(SignatureError):
        parse_signature_file(data)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200),
       st.sampled_from(["CertSN", "SignatureValue", "RelatedEBD", "SignatureAlgorithm"]))
def test_random_element_text_only_raises_signature_error(text, element):
    inner = f"<EBDID>{escape(text)}</EBDID>" if element == "RelatedEBD" else escape(text)
    data = new_form(**{element: f"<{element}>{inner}</{element}>"})
    try:
        parsed = parse_signature_file(data)
    except SignatureError:
        return
    assert parsed.form == "new"
