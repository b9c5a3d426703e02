"""Two duralog nodes over one PostgreSQL behave as one server (issue 13).

The official conformance suite through nginx round-robin (every request may
land on either node), concurrent appends through both nodes, cross-node wakes
of long-poll and SSE readers, the listener's reconnect, and background work
that runs once across the cluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .pg import PgServer, unique_name
from .pg_cluster import RoundRobin, pg_nodes
from .servers import ServerProcess
from .test_conformance import EXPECTED_PASSED, failures, run_conformance


@pytest.fixture
def two_nodes(pg_server: PgServer, tmp_path: Path) -> Iterator[list[ServerProcess]]:
    url = pg_server.create_database(unique_name("two"))
    nodes = pg_nodes(url, 2, tmp_path, extra=["--long-poll-timeout", "3"])
    yield nodes
    for node in nodes:
        node.stop()


@pytest.mark.timeout(1200)
def test_conformance_two_nodes_behind_nginx(two_nodes: list[ServerProcess], tmp_path: Path,
                                            node_available: None) -> None:
    lb = RoundRobin([n.port for n in two_nodes]).start()
    try:
        result = run_conformance(lb.url, tmp_path / "report.json")
    finally:
        lb.stop()
    failed = failures(result)
    print(f"conformance[postgres, 2 nodes, nginx]: {result['numPassedTests']} passed, "
          f"{result['numFailedTests']} failed, {result['numPendingTests']} skipped "
          f"of {result['numTotalTests']}")
    assert failed == [], "\n".join(failed)
    assert result["numPassedTests"] == EXPECTED_PASSED
    assert result["numFailedTests"] == 0
