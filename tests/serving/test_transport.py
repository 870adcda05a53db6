"""The coalescing transport under `vinvl serve`: the writes of one event-loop step leave as one write of
the real transport at the end of the step, in order; closing sends what is held first; aborting
drops it. (Every answer of the server tests goes through it as well.)"""
import asyncio

from vinvl.serving.transport import CoalescingTransport


class RecordingTransport:
    """What a socket transport is asked to do, in order."""

    def __init__(self):
        self.calls = []
        self.closing = False

    def write(self, data):
        self.calls.append(("write", data))

    def close(self):
        self.calls.append(("close",))
        self.closing = True

    def abort(self):
        self.calls.append(("abort",))
        self.closing = True

    def is_closing(self):
        return self.closing

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


def test_writes_of_one_step_leave_as_one_write_at_the_end_of_the_step():
    async def scenario():
        real = RecordingTransport()
        transport = CoalescingTransport(real, asyncio.get_running_loop())
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        transport.write(b"")
        transport.write(bytearray(b"{}"))
        assert real.calls == []  # held until the step ends
        await asyncio.sleep(0)
        assert real.calls == [("write", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")]
        transport.write(b"next")
        await asyncio.sleep(0)
        assert real.calls[-1] == ("write", b"next") and len(real.calls) == 2
        assert transport.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest is the real transport's

        transport.write(b"last words")
        transport.close()
        assert real.calls[-2:] == [("write", b"last words"), ("close",)]
        await asyncio.sleep(0)
        assert len(real.calls) == 4  # nothing more once closed

        dropped = RecordingTransport()
        transport = CoalescingTransport(dropped, asyncio.get_running_loop())
        transport.write(b"never sent")
        transport.abort()
        await asyncio.sleep(0)
        assert dropped.calls == [("abort",)]

    asyncio.run(scenario())
