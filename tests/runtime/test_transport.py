"""The transport's waits: a short timeout really sleeps, and the context terminates."""

from __future__ import annotations

import time

from rmio.runtime.transport import Node


def test_sub_millisecond_poll_sleeps_instead_of_spinning() -> None:
    # zmq_poll counts whole milliseconds; a 0.3 ms wait truncated to 0 would return at once and turn
    # every event loop waiting for a near deadline into a busy loop on a 2-core machine
    node = Node("a0", "tcp://127.0.0.1:*", lambda s: True)
    try:
        start = time.monotonic()
        for _ in range(20):
            assert node.poll(0.3) == []
        assert time.monotonic() - start >= 20 * 0.3e-3
        start = time.monotonic()
        assert node.poll(0) == []
        assert time.monotonic() - start < 0.5
    finally:
        node.close()
    assert node.ctx.closed
