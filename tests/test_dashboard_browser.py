"""The dashboard in a real headless browser (Debian's chromium, driven by Playwright) against real processes.

Screenshots are saved in the test's directory (`dashboard-*.png`) as artefacts.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from procs import Cluster
from test_http_api import holding, running, start
from waiting import wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium (`make test` installs Debian's, as root)")


@pytest.fixture
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        # as root, chromium's own sandbox cannot start; the page is ours, on loopback
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"] if os.geteuid() == 0 else [])
        try:
            yield b
        finally:
            b.close()


def rows(page: Any, table: str) -> list[list[str]]:
    return page.eval_on_selector_all(
        f"#{table} tbody tr", "trs => trs.map(tr => [...tr.cells].map(td => td.textContent.trim()))"
    )


def test_an_admin_and_a_user_watch_and_manage_from_the_page(cluster: Cluster, browser: Any) -> None:
    http, _ = start(cluster)
    cluster.node(cpus=2)
    alice, _ = holding(cluster, "alice", 1)
    _, bob_release = holding(cluster, "bob", 1)
    wait_until(lambda: len(running(http)) == 2, what="both users' jobs running")

    page = browser.new_page()
    page.on("dialog", lambda dialog: dialog.accept())  # the page asks before it drains or cancels
    page.goto(http.url + "/")
    page.fill("#token", http.token)
    page.click("#login button[type=submit]")
    wait_until(lambda: sorted(r[1] for r in rows(page, "jobs")) == ["alice", "bob"], what="both users' jobs on the page")
    assert {r[2] for r in rows(page, "jobs")} == {"running"}
    assert rows(page, "nodes")[0][:2] == ["node", "full"]
    # the chart: per user a solid line of busy CPUs and a dashed one of the CPUs fair share counts
    dashes = page.eval_on_selector_all("#chart polyline", "ls => ls.map(l => l.getAttribute('stroke-dasharray'))")
    assert dashes == [None, "5 4", None, "5 4"] and "dashed: fair-share CPUs" in page.inner_text("#legend")
    # each cluster's held jobs by state, and when it opened (its exact time on hover)
    headers = page.eval_on_selector_all("#clusters thead th", "ths => ths.map(th => th.textContent.trim())")
    jobs_at, opened_at = headers.index("jobs held"), headers.index("opened")
    wait_until(lambda: sorted((r[1], r[jobs_at]) for r in rows(page, "clusters")) == [("alice", "1 running"), ("bob", "1 running")],
               what="each cluster's jobs by state on the page")  # fmt: skip
    assert all(re.fullmatch(r"\d+ s ago", r[opened_at]) for r in rows(page, "clusters")), rows(page, "clusters")
    assert page.get_attribute(f"#clusters tbody tr td:nth-child({opened_at + 1}) span", "title")
    page.screenshot(path=str(cluster.workdir / "dashboard-admin.png"), full_page=True)

    # drain the node from the page: the scheduler acts on it
    page.click("#nodes tbody tr >> text=drain")
    wait_until(lambda: http.get("/api/v1/nodes")[0]["state"] == "drained", what="the scheduler to drain the node")
    wait_until(lambda: rows(page, "nodes")[0][1] == "drained", what="the page to show the drain")
    # cancel alice's job from the page
    page.click("#jobs tbody tr:has(td:text-is('alice')) >> text=cancel")
    assert alice.wait(60) == 0
    assert "ends [[1, 8, null]]" in alice.stdout  # her program got job 1 back Cancelled (dispy's 8)
    # a job that ends shows on the page without a reload
    bob_release.with_name(f"{bob_release.name}.0").touch()
    wait_until(lambda: all(r[2] != "running" for r in rows(page, "jobs")), what="the page to show bob's job ended")
    wait_until(lambda: rows(page, "clusters") == [], what="both programs' closed clusters gone from the page")
    page.screenshot(path=str(cluster.workdir / "dashboard-admin-after.png"), full_page=True)


def test_a_user_sees_only_their_own_on_the_page(cluster: Cluster, browser: Any) -> None:
    http, _ = start(cluster)
    cluster.node(cpus=2)
    holding(cluster, "alice", 1)
    holding(cluster, "bob", 1)
    wait_until(lambda: len(running(http)) == 2, what="both users' jobs running")
    page = browser.new_page(viewport={"width": 400, "height": 800})  # a phone's width
    page.goto(http.url + "/")
    page.fill("#user", "bob")
    page.fill("#secret", "b-secret")
    page.click("#login button[type=submit]")
    wait_until(lambda: [r[1] for r in rows(page, "jobs")] == ["bob"], what="bob's job on his page")
    assert [r[0] for r in rows(page, "users")] == ["bob"]
    headers = page.eval_on_selector_all("#users thead th", "ths => ths.map(th => th.textContent.trim())")
    busy, fair = headers.index("busy"), headers.index("fair-share CPUs")
    assert [(r[busy], r[fair]) for r in rows(page, "users")] == [("1", "1.0")]  # nothing sent ahead: as busy
    assert [r[1] for r in rows(page, "clusters")] == ["bob"]
    assert page.is_hidden("#nodes button")  # no management of nodes for a user
    assert page.inner_text("#who") == "user bob"
    page.screenshot(path=str(cluster.workdir / "dashboard-bob.png"), full_page=True)
    # a wrong secret brings the login form back, with the scheduler's answer
    page2 = browser.new_page()
    page2.goto(http.url + "/")
    page2.fill("#user", "bob")
    page2.fill("#secret", "wrong")
    page2.click("#login button[type=submit]")
    wait_until(lambda: page2.inner_text("#login-error") == "login failed", what="the refusal on the page")
