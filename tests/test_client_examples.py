"""The programs in examples/, run as a user would: each its own process, dispy's way."""

from __future__ import annotations

import subprocess
import sys

import pytest

from procs import ROOT, Cluster

EXPECTED = {
    "sample.py": "Total job time",
    "setup_data.py": "h: 100 words",
    "program.py": "9592 primes below 100000",
    "modern.py": "asyncio: [0, 1, 1, 2, 3, 5, 8, 13, 21, 34] 2880067194370816120",
}


@pytest.mark.parametrize("example", sorted(EXPECTED))
def test_jobcluster_example_runs(cluster: Cluster, example: str) -> None:
    proc = cluster.start([sys.executable, str(ROOT / "examples" / example)], example.removesuffix(".py"))
    try:
        assert proc.wait(60) == 0, cluster.describe()
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{example} did not finish:\n{cluster.describe()}") from None
    assert EXPECTED[example] in proc.stdout, cluster.describe()


def test_shared_cluster_example_runs(cluster: Cluster) -> None:
    cluster.scheduler()
    cluster.node(cpus=2)
    proc = cluster.start(
        [sys.executable, str(ROOT / "examples" / "pi.py"), "8", "20000"], "pi", env={"DISPY_SCHEDULER": cluster.address}
    )
    assert proc.wait(60) == 0, cluster.describe()
    assert "pi" in proc.stdout.lower(), cluster.describe()
