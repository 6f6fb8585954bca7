"""The typed cluster and job options (dispy_wire.cluster_options), and what the client packs into them."""

from __future__ import annotations

import functools
import sys
from typing import Any

import cloudpickle
import pytest

import dispy_client as dispy
from dispy_client.packaging import build_computation, job_depends
from dispy_wire import result_mac
from dispy_wire.cluster_options import BadOptions, ClusterOptions, JobOptions, NodeSpec, Runtime
from dispy_wire.payload import loads, unpack_computation

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_cluster_options_round_trip_through_their_wire_form() -> None:
    opts = ClusterOptions(
        nodes=(NodeSpec("alpha", "10.0.0.1", None, 2), NodeSpec("10.1.*", "10.1.*", 51348, -1)),
        allocate_by_client=True, node_updates=True, keep_files=True, cpus=3,
        limits={"timeout": 60, "memory": 1 << 30, "setup_timeout": 5.5}, runtime=Runtime("3.11", "3.1.3"),
    )  # fmt: skip
    wire = opts.to_wire()
    assert wire["allocate"] == "client" and wire["runtime"] == {"python": "3.11", "cloudpickle": "3.1.3"}
    assert ClusterOptions.from_wire(wire) == opts
    assert ClusterOptions().to_wire() == {} and ClusterOptions.from_wire({}) == ClusterOptions()


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"opt": 1}, "'opt'"),
        ({"nodes": 5}, "nodes must be a list"),
        ({"nodes": [{"cpus": 1}]}, "needs a host"),
        ({"nodes": [{"host": "a", "cpus": "all"}]}, "whole numbers"),
        ({"allocate": "server"}, "allocate"),
        ({"keep_files": "yes"}, "keep_files"),
        ({"cpus": 0}, "cpus=0"),
        ({"memory": -1}, "memory=-1"),
        ({"timeout": True}, "timeout=True"),
        ({"runtime": {"python": "3.11"}}, "runtime"),
        ({"runtime": {"python": 3.11, "cloudpickle": "3"}}, "runtime"),
        ([], "map"),
    ],
)
def test_bad_cluster_options_are_refused_naming_the_field(raw: Any, named: str) -> None:
    with pytest.raises(BadOptions, match=named.replace("*", r"\*")):
        ClusterOptions.from_wire(raw)


def test_job_options_round_trip_and_refuse_bad_fields() -> None:
    opts = JobOptions(timeout=2.5, files=(("a.txt", b"x", 0o600),), node="alpha")
    assert JobOptions.from_wire(opts.to_wire()) == opts
    for bad in ({"timeout": 0}, {"node": ""}, {"depends": [["a", "not bytes", 0]]}, {"priority": 1}):
        with pytest.raises(BadOptions):
            JobOptions.from_wire(bad)


def test_runtime_fits_on_the_same_python_and_cloudpickle_release_line() -> None:
    here = Runtime("3.11", "3.1.3")
    assert here.mismatch(Runtime("3.11", "3.1.9")) == ""
    assert "Python 3.12" in here.mismatch(Runtime("3.12", "3.1.3"))
    assert "cloudpickle 2.2.1" in here.mismatch(Runtime("3.11", "2.2.1"))
    assert Runtime.here().mismatch(Runtime.here()) == ""


class Scaler:
    def __init__(self, k: int) -> None:
        self.k = k


def add(a: int, b: int) -> int:
    return a + b


def compute(n: int) -> int:
    return n


def test_depends_instances_give_their_class_and_partials_their_function() -> None:
    blob = build_computation(compute, result_mac.new_key(), [Scaler(2), functools.partial(add, 1)])
    code = loads(unpack_computation(blob).objects)
    assert set(code.globals) == {"Scaler", "add"}
    assert code.globals["add"](2, 3) == 5 and code.globals["Scaler"](4).k == 4


def test_setup_args_travel_with_the_computation() -> None:
    blob = build_computation(compute, result_mac.new_key(), (), setup=add, setup_args=(1, 2))
    assert loads(unpack_computation(blob).objects).setup_args == (1, 2)


def test_dispy_job_depends_splits_files_from_code(tmp_path: Any) -> None:
    path = tmp_path / "data.txt"
    path.write_bytes(b"abc")
    files, objects = job_depends([str(path), add, Scaler(1), functools.partial(add, 2)])
    assert [f[:2] for f in files] == [("data.txt", b"abc")]
    assert objects == {"add": add, "Scaler": Scaler}
    with pytest.raises(TypeError, match="dispy_job_depends"):
        job_depends([42])


def test_node_allocate_takes_dispys_depends_and_setup_args() -> None:
    entry = dispy.NodeAllocate("*", depends=["f.dat"], setup_args=("f.dat",))
    assert (entry.depends, entry.setup_args, entry.per_node) == (["f.dat"], ("f.dat",), True)
    assert not dispy.NodeAllocate("*", cpus=2).per_node
    with pytest.raises(TypeError, match="tuple"):
        dispy.NodeAllocate("*", setup_args=["f.dat"])  # type: ignore[arg-type]
