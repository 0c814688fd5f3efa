"""Loaded by schemathesis (SCHEMATHESIS_HOOKS) in tests/test_api_contract.py: how to send bodies of
the media types the API takes besides JSON."""

import schemathesis

schemathesis.serializer.alias("audio/wav", "application/octet-stream")  # POST /audio: bytes as they are
schemathesis.serializer.alias("audio/mpeg", "application/octet-stream")  # POST /audio: MP3 too
schemathesis.serializer.alias("application/xml", "text/plain")  # POST /alerts/cap: a generated document
