"""The in-process pipe a JobCluster's client and embedded scheduler talk through (dispy_client/pipe.py):
bytes in order, reading paused and resumed, the writer's backpressure, an orderly close and an abort."""

from __future__ import annotations

import asyncio

from dispy_client import pipe


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.data = b""
        self.events: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        self.data += data

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append(f"lost {exc}")


async def turns(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def joined() -> tuple[Recorder, Recorder]:
    client, server = Recorder(), Recorder()
    pipe.connect(asyncio.get_running_loop(), client, server)
    assert client.transport is not None and server.transport is not None
    return client, server


def test_bytes_arrive_in_order_on_a_later_callback_and_the_peer_is_loopback() -> None:
    async def main() -> None:
        client, server = joined()
        assert client.transport is not None and server.transport is not None
        assert server.transport.get_extra_info("peername") == ("127.0.0.1", 0)
        assert server.transport.get_extra_info("ssl_object") is None
        client.transport.write(b"ab")
        client.transport.write(b"cd")
        server.transport.write(b"xy")
        assert server.data == b""  # not re-entrant: the writer's code goes on first
        await turns()
        assert (server.data, client.data) == (b"abcd", b"xy")

    asyncio.run(main())


def test_a_paused_reader_holds_what_arrives_until_it_resumes() -> None:
    async def main() -> None:
        client, server = joined()
        assert client.transport is not None and server.transport is not None
        server.transport.pause_reading()
        client.transport.write(b"held")
        await turns()
        assert server.data == b"" and client.transport.get_write_buffer_size() == 4
        server.transport.resume_reading()
        await turns()
        assert server.data == b"held" and client.transport.get_write_buffer_size() == 0

    asyncio.run(main())


def test_a_writer_above_the_high_mark_is_paused_until_the_reader_takes_its_bytes() -> None:
    async def main() -> None:
        client, server = joined()
        assert client.transport is not None and server.transport is not None
        client.transport.set_write_buffer_limits(high=10, low=2)
        server.transport.pause_reading()
        client.transport.write(b"0123456789ab")
        assert client.events == ["made", "pause"]
        server.transport.resume_reading()
        await turns()
        assert client.events == ["made", "pause", "resume"] and server.data == b"0123456789ab"

    asyncio.run(main())


def test_close_delivers_what_was_written_then_both_ends_are_lost() -> None:
    async def main() -> None:
        client, server = joined()
        assert client.transport is not None and server.transport is not None
        client.transport.write(b"last words")
        client.transport.close()
        assert client.transport.is_closing()
        client.transport.write(b"after close")  # dropped, as on a closing socket
        await turns()
        assert server.data == b"last words"
        assert client.events[-1] == server.events[-1] == "lost None"
        server.transport.write(b"to nobody")  # a write after the end is dropped, not an error
        await turns()
        assert client.data == b""

    asyncio.run(main())


def test_abort_drops_what_is_not_delivered() -> None:
    async def main() -> None:
        client, server = joined()
        assert client.transport is not None and server.transport is not None
        server.transport.pause_reading()
        client.transport.write(b"never read")
        client.transport.abort()
        await turns()
        server.transport.resume_reading()
        await turns()
        assert server.data == b"" and server.events == ["made", "lost None"] and client.events == ["made", "lost None"]

    asyncio.run(main())


def test_a_reader_that_fails_ends_the_connection_on_both_sides_as_a_socket_would() -> None:
    # Without it a bug in a handler lost the message it was reading and left the link up: the job whose result it
    # carried never ended (over a socket the link drops and the session gets the unacknowledged results again).
    class Failing(Recorder):
        def data_received(self, data: bytes) -> None:
            raise RuntimeError("handler bug")

    async def main() -> None:
        client, server = Recorder(), Failing()
        pipe.connect(asyncio.get_running_loop(), client, server)
        assert client.transport is not None and server.transport is not None
        client.transport.write(b"results")
        await turns()
        assert server.events[-1] == client.events[-1] == "lost handler bug"
        client.transport.write(b"more")  # after the loss: dropped, no second failure
        await turns()
        assert server.events.count("lost handler bug") == 1

    asyncio.run(main())


def test_one_side_failing_in_connection_lost_does_not_keep_the_other_from_hearing_of_it() -> None:
    class LossFails(Recorder):
        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            raise RuntimeError("bug in connection_lost")

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: None)  # the bug is expected
        client, server = LossFails(), Recorder()
        pipe.connect(asyncio.get_running_loop(), client, server)
        assert client.transport is not None
        client.transport.abort()
        await turns()
        assert client.events[-1] == server.events[-1] == "lost None"

    asyncio.run(main())
