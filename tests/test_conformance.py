"""The official conformance suite (npm @durable-streams/server-conformance-tests 0.3.6),
run by vitest against a duralog server this test starts, once per backend.

The suite is the protocol authors' own; the numbers it reports are the verdict.
Our server runs with a 3 s long-poll timeout here: the suite's offset=now
long-poll tests run under vitest's default 5 s test timeout, and the protocol
leaves the timeout to the server (PROTOCOL.md 5.7).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from .servers import ROOT, duralog_server

# 338 tests, the 6 subscription tests (PROTOCOL.md 6-7) included.
EXPECTED_PASSED = 338


def run_conformance(url: str, report: Path) -> dict:
    cmd = ["npx", "--no-install", "vitest", "run", "--config", "conformance/vitest.config.mjs",
           "--reporter=default", "--reporter=json", f"--outputFile.json={report}"]
    proc = subprocess.run(cmd, cwd=ROOT, env={**_env(), "CONFORMANCE_TEST_URL": url},
                          capture_output=True, text=True, timeout=900)
    if not report.exists():
        raise AssertionError(
            f"vitest wrote no report:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return json.loads(report.read_text())


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "FORCE_COLOR": "0", "CI": "true"}


def failures(result: dict) -> list[str]:
    out = []
    for suite in result.get("testResults", []):
        for test in suite.get("assertionResults", []):
            if test["status"] == "failed":
                message = (test.get("failureMessages") or [""])[0].splitlines()[0:2]
                out.append(f"{test['fullName']}: {' '.join(message)[:300]}")
    return out


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("backend", ["memory", "sqlite", "postgres"])
def test_official_conformance_suite(backend: str, tmp_path: Path, node_available: None,
                                    request: pytest.FixtureRequest) -> None:
    extra = ["--long-poll-timeout", "3"]
    if backend == "postgres":
        # A real PostgreSQL (tests/pg.py), a database of its own.
        extra += ["--database-url", request.getfixturevalue("pg_db")]
    server = duralog_server(backend, data_dir=tmp_path / "data", extra=extra,
                            log_path=tmp_path / "server.log").start()
    try:
        result = run_conformance(server.url, tmp_path / "report.json")
    finally:
        server.stop()
    failed = failures(result)
    print(f"conformance[{backend}]: {result['numPassedTests']} passed, "
          f"{result['numFailedTests']} failed, {result['numPendingTests']} skipped "
          f"of {result['numTotalTests']}")
    assert failed == [], "\n".join(failed)
    assert result["numPassedTests"] == EXPECTED_PASSED
    assert result["numFailedTests"] == 0


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_conformance_with_auth(backend: str, tmp_path: Path, node_available: None) -> None:
    """The same suite with auth on, through tests/auth_proxy.py adding a minted token of
    every scope over every stream (docs/security.md)."""
    import sys

    from duralog.auth import mint_token

    from .servers import ServerProcess, free_port

    secret = "conformance-signing-secret-0123456789"
    auth = tmp_path / "auth.toml"
    auth.write_text(f'signing_secret = "{secret}"\n')
    token = mint_token(secret, read=["**"], write=["**"], admin=["**"], ttl=3600)
    server = duralog_server(backend, data_dir=tmp_path / "data",
                            extra=["--long-poll-timeout", "3", "--auth", str(auth)],
                            log_path=tmp_path / "server.log").start()
    port = free_port()
    proxy = ServerProcess([sys.executable, str(ROOT / "tests/auth_proxy.py"), "--listen",
                           str(port), "--upstream", f"127.0.0.1:{server.port}", "--token",
                           token], port)
    try:
        import httpx

        # Auth is really on: without the proxy a write is refused.
        assert httpx.put(server.url + "/v1/stream/unauthorized").status_code == 401
        proxy.start()
        result = run_conformance(proxy.url, tmp_path / "report.json")
    finally:
        proxy.stop()
        server.stop()
    failed = failures(result)
    print(f"conformance+auth[{backend}]: {result['numPassedTests']} passed, "
          f"{result['numFailedTests']} failed, {result['numPendingTests']} skipped "
          f"of {result['numTotalTests']}")
    assert failed == [], "\n".join(failed)
    assert result["numPassedTests"] == EXPECTED_PASSED
    assert result["numFailedTests"] == 0
