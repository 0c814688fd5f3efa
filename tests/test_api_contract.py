"""The OpenAPI description is a contract: schemathesis holds the real daemon to it.

The daemon runs against the simulator (two terminals, programs played 20x faster) and schemathesis
calls it with an admin token, so every operation is reachable. Its command line runs the examples,
coverage and fuzzing phases with a bounded number of cases per operation, deterministically (the same
requests every run), valid and invalid, and checks that no answer is a 5xx, that every status and
content type is documented, that bodies and headers are what ``/openapi.json`` says, that invalid
requests are refused, that unsupported methods get 405 and that no operation skips authentication.

Left out on purpose: ``GET /events`` (an endless stream; tests/test_api_hardening.py covers it), and
the ``positive_data_acceptance`` check: some rules cannot be said in JSON Schema (a text with nothing
to speak, an emergency without a severity, a CAP document or WAV file that is not one), so a request
the schema allows may still be refused, with a documented 422.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from apikit import running_gateway
from simkit import REPO, make_token

EXAMPLES_PER_OPERATION = 15
"""Per operation and phase: the run takes a couple of minutes on a 2-core machine."""
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_headers_conformance", "response_schema_conformance", "negative_data_rejection",
          "unsupported_method", "ignored_auth", "missing_required_header")
RUN_GUARD_S = 600
"""Only a hang guard for the whole schemathesis run, never a performance claim."""


def test_every_answer_is_documented_and_none_is_a_server_error(tmp_path: Path):
    with running_gateway(tmp_path) as gateway:
        admin = make_token(gateway.sim.path, "contract-admin", "admin")
        env = {**os.environ, "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
               "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
        run = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "run", f"{gateway.base_url}/openapi.json",
             "--header", f"Authorization: Bearer {admin}", "--checks", ",".join(CHECKS),
             "--phases", "examples,coverage,fuzzing", "--max-examples", str(EXAMPLES_PER_OPERATION),
             "--generation-deterministic", "--workers", "1", "--request-timeout", "60",
             "--exclude-path", "/api/v1/events", "--suppress-health-check", "filter_too_much",
             "--no-color", "--report-dir", str(tmp_path / "schemathesis")],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=RUN_GUARD_S)
        daemon_log = gateway.log()
    report = run.stdout + run.stderr
    assert run.returncode == 0, f"{report[-12000:]}\n--- daemon log ---\n{daemon_log[-4000:]}"
    assert admin not in report + daemon_log  # the token is filtered from reports and redacted from logs
    assert "Internal Server Error" not in daemon_log and "Traceback" not in daemon_log, daemon_log[-4000:]
