"""A program's own cluster page (`dispy_client.httpd.DispyHTTPServer`) in a real headless browser and as JSON.

A real program (JobCluster with its embedded scheduler and node, or SharedJobCluster against real scheduler
and node processes) serves the page; Debian's chromium, driven by Playwright, watches it and cancels a job
from it. Screenshots are saved in the test's directory (`cluster-page-*.png`) as artefacts.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from procs import Cluster, no_node_outlives_its_test  # noqa: F401  (autouse: a failed test leaves no embedded node)
from test_dashboard_browser import CHROMIUM, browser  # noqa: F401  (the fixture)
from waiting import wait_until

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium (`make test` installs Debian's, as root)")

PROGRAM = """
    import os, sys, time
    from dispy_client import JobCluster, SharedJobCluster
    from dispy_client.httpd import DispyHTTPServer

    def compute(release):
        import os, time
        deadline = time.monotonic() + 100
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.02)
        return os.path.exists(release)

    kind, release = sys.argv[1], sys.argv[2]
    cluster = JobCluster(compute) if kind == "JobCluster" else SharedJobCluster(compute)
    server = DispyHTTPServer(cluster, port=0)
    print("http on http://%s:%d" % server.address, flush=True)
    jobs = [cluster.submit_job_id(f"job-{i}", f"{release}.{i}") for i in range(2)]
    cluster.wait()
    print("ends", sorted((j.id, j.status) for j in jobs), flush=True)
    while not os.path.exists(release + ".stop"):  # the page stays up until the test has seen it all
        time.sleep(0.05)
    server.shutdown()
    cluster.close()
    """


def jobs_on(page: Any) -> dict[str, str]:
    """job id -> state, as the page shows them."""
    found = page.eval_on_selector_all(
        "section.cluster table.jobs tbody tr", "trs => trs.map(tr => [...tr.cells].map(td => td.textContent.trim()))"
    )
    return {row[0]: row[1] for row in found}


def call(url: str, method: str = "GET", host: str | None = None, kind: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=b"{}" if method == "POST" else None, method=method)
    if host is not None:
        request.add_header("Host", host)
    if kind is not None:
        request.add_header("Content-Type", kind)
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


@pytest.mark.parametrize("kind", ["JobCluster", "SharedJobCluster"])
def test_the_page_shows_nodes_and_jobs_live_and_cancels_a_job(cluster: Cluster, browser: Any, kind: str) -> None:  # noqa: F811
    if kind == "SharedJobCluster":
        cluster.scheduler()
        cluster.node(cpus=2)
    release = cluster.workdir / "release"
    program = cluster.client(PROGRAM, kind, args=[kind, str(release)])
    url = program.wait_for_line(r"http on (\S+)").group(1)
    assert url.startswith("http://127.0.0.1:")  # loopback unless told otherwise

    # the JSON: nodes with this cluster's use of them, and its jobs
    def running() -> list[dict[str, Any]]:
        status = call(url + "/cluster_status.json")[1]["compute"]
        return [j for j in status["jobs"] if j["state"] == "running"]

    wait_until(lambda: len(running()) == 2, what="both jobs running")
    status = call(url + "/cluster_status.json")[1]["compute"]
    assert (status["jobs_submitted"], status["jobs_running"], status["jobs_pending"], status["jobs_total"]) == (2, 2, 2, 2)
    (node,) = status["nodes"]
    assert node["busy"] == 2 and node["offered_cpus"] >= node["cpus"] >= 2 and node["update_time"] > 0, node
    assert sorted(j["id"] for j in status["jobs"]) == ["job-0", "job-1"]
    assert all(j["node"] == node["name"] and j["started"] >= j["submitted"] > 0 for j in status["jobs"])

    page = browser.new_page()
    page.on("dialog", lambda dialog: dialog.accept())  # the page asks before it cancels
    page.goto(url + "/")
    wait_until(lambda: jobs_on(page) == {"job-0": "running", "job-1": "running"}, what="both jobs on the page")
    assert page.text_content("#live") == "live"
    nodes = page.eval_on_selector_all("section.cluster table.nodes tbody tr", "trs => trs.map(tr => tr.cells[0].textContent)")
    assert nodes == [node["name"]]
    page.screenshot(path=str(cluster.workdir / f"cluster-page-{kind}.png"), full_page=True)

    # cancel job-0 from the page: the program gets it back Cancelled; job-1's end shows without a reload
    page.click("section.cluster table.jobs tbody tr:has(td:text-is('job-0')) >> text=cancel")
    wait_until(lambda: jobs_on(page).get("job-0") == "cancelled", what="the page to show job-0 cancelled")
    release.with_name("release.1").touch()
    wait_until(lambda: jobs_on(page) == {"job-0": "cancelled", "job-1": "finished"}, what="job-1's end on the page")
    program.wait_for_line(r"ends \[\('job-0', 8\), \('job-1', 11\)\]")  # dispy's Cancelled and Finished
    page.screenshot(path=str(cluster.workdir / f"cluster-page-{kind}-after.png"), full_page=True)

    # what it refuses: an ended job, a POST that is not JSON, a name that is not its own (DNS rebinding)
    cancel = f"{url}/api/v1/clusters/compute/jobs/{status['jobs'][1]['uid']}/cancel"
    assert call(cancel, "POST", kind="application/json")[0] == 409
    assert call(cancel, "POST", kind="text/plain")[0] == 415
    assert call(url + "/cluster_status.json", host="attacker.example:80")[0] == 421
    assert call(url + "/api/v1/clusters/nope/jobs/1/cancel", "POST", kind="application/json")[0] == 404
    release.with_name("release.stop").touch()
    assert program.wait(60) == 0, cluster.describe()
