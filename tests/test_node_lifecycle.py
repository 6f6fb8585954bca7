"""The node's cluster lifecycle (dispy_node/lifecycle.py): transitions and chains, without processes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dispy_node.lifecycle import TRANSITIONS, Chains, Incarnation, InvalidTransition, Phase


@pytest.fixture
def chains() -> Iterator[Chains[str]]:
    c: Chains[str] = Chains()
    yield c
    c.check()


def _begin(chains: Chains[str], cid: str = "c1") -> Incarnation[str]:
    inc = chains.begin(cid, lambda before: f"after {before.seq}" if before else "first")
    assert inc is not None
    chains.check()
    return inc


def test_every_transition_not_in_the_table_raises() -> None:
    for start in Phase:
        for end in Phase:
            inc: Incarnation[str] = Incarnation("c", "", start)
            if (start, end) in TRANSITIONS:
                inc.to(end, "test")
                assert inc.phase is end
            else:
                with pytest.raises(InvalidTransition):
                    inc.to(end, "test")
                assert inc.phase is start


def test_a_normal_life_is_logged_with_its_stimuli(chains: Chains[str]) -> None:
    inc = _begin(chains)
    inc.to(Phase.READY, "zygote ready")
    inc.to(Phase.UNLOADING, "unload asked")
    inc.to(Phase.STOPPED, "stop")
    chains.retire(inc)
    assert inc.story() == ["STARTING->READY: zygote ready", "READY->UNLOADING: unload asked",
                           "UNLOADING->STOPPED: stop", "STOPPED->RETIRED: retired"]  # fmt: skip
    assert chains.newest("c1") is None


def test_a_second_load_of_a_live_cluster_is_refused(chains: Chains[str]) -> None:
    _begin(chains)
    assert chains.begin("c1", lambda before: "second") is None


def test_a_new_incarnation_waits_for_the_newest_ending_one(chains: Chains[str]) -> None:
    first = _begin(chains)
    first.to(Phase.READY)
    first.to(Phase.UNLOADING)
    second = _begin(chains)
    assert second.body == f"after {first.seq}"
    assert chains.live("c1") is second
    assert list(chains.ending()) == [first]


def test_only_the_live_incarnation_can_fail(chains: Chains[str]) -> None:
    first = _begin(chains)
    first.to(Phase.STOPPED, "unloaded while starting")
    second = _begin(chains)
    assert not chains.fail(first, "late failure of the old one")
    assert second.phase is Phase.STARTING and not chains.dropping("c1")
    assert chains.fail(second, "setup failed")
    assert second.phase is Phase.FAILED and second.why == "setup failed"
    assert chains.dropping("c1") and chains.live("c1") is None


def test_a_failed_cluster_drops_jobs_until_loaded_or_unloaded_again(chains: Chains[str]) -> None:
    inc = _begin(chains)
    chains.fail(inc, "zygote died")
    inc.to(Phase.STOPPED)
    chains.retire(inc)
    assert chains.dropping("c1")
    _begin(chains)
    assert not chains.dropping("c1")
    chains.refuse("c2")
    assert chains.dropping("c2")
    chains.forget_failure("c2")
    assert not chains.dropping("c2") and chains.newest("c2") is None


def test_silent_once_failed_or_stopped() -> None:
    reports = {p for p in Phase if Incarnation("c", "", p).reports}
    assert reports == {Phase.STARTING, Phase.READY, Phase.UNLOADING}


def test_retiring_a_live_incarnation_is_a_bug(chains: Chains[str]) -> None:
    inc = _begin(chains)
    with pytest.raises(InvalidTransition):
        chains.retire(inc)
    assert chains.live("c1") is inc


def test_a_remnant_is_born_stopped_and_ends_before_the_next_load(chains: Chains[str]) -> None:
    rem = chains.remnant("c1", "dir only")
    assert rem.phase is Phase.STOPPED and chains.live("c1") is None
    nxt = _begin(chains)
    assert nxt.body == f"after {rem.seq}"
    chains.retire(rem)
    assert list(chains.ending()) == [] and chains.live("c1") is nxt
