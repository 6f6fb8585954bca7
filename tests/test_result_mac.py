"""The MACs on what jobs send their clients (`dispy_wire.result_mac`): pure, no processes."""

from __future__ import annotations

import hashlib
import hmac

import msgpack
import pytest

from dispy_wire import result_mac
from dispy_wire.messages import JobFile, JobResult
from dispy_wire.payload import Computation, pack_computation, unpack_computation, without_result_key
from dispy_wire.result_mac import Kind, file_ok, result_ok, sign
from dispy_wire.status import JobStatus

KEY = bytes(range(32))
FINISHED, PROVISIONAL = int(JobStatus.FINISHED), int(JobStatus.PROVISIONAL_RESULT)


def signed_result(
    job_id: int = 7, status: int = FINISHED, payload: bytes = b"\x80\x05K*.", key: bytes = KEY
) -> JobResult:
    kind = Kind.PROVISIONAL if status == PROVISIONAL else Kind.RESULT
    mac = sign(key, kind, "c-1", job_id, status, payload)
    return JobResult("c-1", job_id, status, payload, b"out", b"", "", "", 1.0, 2.0, mac)


def signed_file(job_id: int = 7, name: str = "out.csv", data: bytes = b"a,b\n", mode: int = 0o644) -> JobFile:
    return JobFile("c-1", job_id, name, data, mode, sign(KEY, Kind.FILE, "c-1", job_id, 0, data, name, mode))


def test_a_result_signed_by_its_job_verifies() -> None:
    assert result_ok(KEY, "c-1", signed_result())
    assert result_ok(KEY, "c-1", signed_result(status=PROVISIONAL))
    assert file_ok(KEY, "c-1", signed_file())


def test_a_mac_for_one_job_does_not_validate_another() -> None:
    r = signed_result(job_id=7)
    assert not result_ok(KEY, "c-1", r._replace(job_id=8))
    f = signed_file(job_id=7)
    assert not file_ok(KEY, "c-1", f._replace(job_id=8))


def test_a_mac_for_one_cluster_does_not_validate_another() -> None:
    assert not result_ok(KEY, "c-2", signed_result())
    assert not file_ok(KEY, "c-2", signed_file())


def test_a_result_mac_does_not_validate_as_a_provisional_result_nor_the_reverse() -> None:
    final = signed_result(status=FINISHED)
    assert not result_ok(KEY, "c-1", final._replace(status=PROVISIONAL))
    provisional = signed_result(status=PROVISIONAL)
    assert not result_ok(KEY, "c-1", provisional._replace(status=FINISHED))


def test_kinds_are_separated_even_for_the_same_bytes() -> None:
    macs = {sign(KEY, kind, "c-1", 7, 0, b"same") for kind in Kind}
    assert len(macs) == len(Kind)


def test_a_changed_status_payload_or_key_fails() -> None:
    r = signed_result()
    assert not result_ok(KEY, "c-1", r._replace(status=int(JobStatus.TERMINATED)))
    assert not result_ok(KEY, "c-1", r._replace(result=r.result + b"!"))  # type: ignore[operator]
    assert not result_ok(bytes(32), "c-1", r)
    assert not result_ok(KEY, "c-1", signed_result(key=bytes(32)))


def test_a_file_mac_covers_its_name_mode_and_data() -> None:
    f = signed_file()
    assert not file_ok(KEY, "c-1", f._replace(name="evil.sh"))
    assert not file_ok(KEY, "c-1", f._replace(mode=0o755))
    assert not file_ok(KEY, "c-1", f._replace(data=b"x"))


def test_field_boundaries_cannot_be_shifted_between_name_and_data() -> None:
    a = sign(KEY, Kind.FILE, "c-1", 7, 0, b"bc", "a", 0)
    b = sign(KEY, Kind.FILE, "c-1", 7, 0, b"c", "ab", 0)
    assert a != b


@pytest.mark.parametrize("mac", [b"", b"\0" * 32, b"short"], ids=["missing", "zeros", "short"])
def test_a_missing_or_bad_mac_fails(mac: bytes) -> None:
    assert not result_ok(KEY, "c-1", signed_result()._replace(mac=mac))
    assert not file_ok(KEY, "c-1", signed_file()._replace(mac=mac))


def test_a_finished_result_without_a_payload_still_needs_a_mac() -> None:
    r = JobResult("c-1", 7, FINISHED, None, b"", b"", "", "", 1.0, 2.0)
    assert result_mac.needs_mac(r) and not result_ok(KEY, "c-1", r)


def test_results_the_node_makes_carry_no_payload_and_need_no_mac() -> None:
    for status in (JobStatus.TERMINATED, JobStatus.CANCELLED, JobStatus.ABANDONED):
        r = JobResult("c-1", 7, int(status), None, b"", b"", "killed by the node", "Killed", 1.0, 2.0)
        assert not result_mac.needs_mac(r) and result_ok(KEY, "c-1", r)
    with_payload = JobResult("c-1", 7, int(JobStatus.TERMINATED), b"pickle", b"", b"", "", "", 1.0, 2.0)
    assert result_mac.needs_mac(with_payload) and not result_ok(KEY, "c-1", with_payload)


def test_keys_are_fresh_and_full_length() -> None:
    keys = {result_mac.new_key() for _ in range(8)}
    assert len(keys) == 8 and all(len(k) == result_mac.KEY_SIZE for k in keys)


def test_a_computation_left_in_a_file_has_no_result_key() -> None:
    comp = Computation("function", "f", [], [], b"objects", KEY)
    stripped = unpack_computation(without_result_key(pack_computation(comp)))
    assert stripped.result_key == b"" and stripped.objects == b"objects"


@pytest.mark.parametrize("key", [KEY, b"", b"k" * 64, bytes(range(200))])  # ours, and keys at and past a block
def test_the_mac_is_hmac_sha256_of_the_records_fields_and_payload(key: bytes) -> None:
    head = msgpack.packb([result_mac.DOMAIN, "file", "c-1", 7, 0, "out.csv", 0o644, 4], use_bin_type=True)
    expected = hmac.new(key, head + b"a,b\n", hashlib.sha256).digest()
    assert sign(key, Kind.FILE, "c-1", 7, 0, b"a,b\n", "out.csv", 0o644) == expected
