"""The raw ASGI helpers both services share: header lookup and draining a refused body."""

import asyncio

import pytest

from kubeforge.serving.limits import PayloadTooLarge, read_body
from kubeforge.serving.rawasgi import drain, drain_unread, header


class Body:
    """An ASGI receive() that hands out ``chunks`` of a body, then a disconnect; counts the calls."""

    def __init__(self, chunks: list[bytes], disconnect_after: int | None = None):
        self.chunks = chunks
        self.disconnect_after = disconnect_after
        self.calls = 0

    async def __call__(self) -> dict:
        self.calls += 1
        if self.disconnect_after is not None and self.calls > self.disconnect_after:
            return {"type": "http.disconnect"}
        if self.calls > len(self.chunks):
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": self.chunks[self.calls - 1],
                "more_body": self.calls < len(self.chunks)}


EXPECTING = {"headers": [(b"content-length", b"30"), (b"expect", b"100-continue")]}
PLAIN = {"headers": [(b"content-length", b"30")]}


def test_header_finds_the_first_value_and_none_when_absent():
    scope = {"headers": [(b"a", b"1"), (b"b", b"2"), (b"a", b"3")]}
    assert header(scope, b"a") == b"1" and header(scope, b"c") is None and header({}, b"a") is None


def test_drain_reads_the_body_to_its_end_and_says_whether_the_client_stayed():
    body = Body([b"x" * 10] * 3)
    assert asyncio.run(drain(body)) and body.calls == 3
    assert not asyncio.run(drain(Body([b"x" * 10] * 3, disconnect_after=1)))


def test_drain_stops_at_its_bound():
    body = Body([b"x" * 10] * 100)
    assert asyncio.run(drain(body, limit=25)) and body.calls == 3  # 30 bytes read: past the bound, it gives up


def test_a_refusal_before_the_body_does_not_ask_an_expect_100_continue_client_for_it():
    waiting = Body([b"x" * 10] * 3)
    assert asyncio.run(drain_unread(EXPECTING, waiting)) and waiting.calls == 0  # receive() would send 100 Continue
    sending = Body([b"x" * 10] * 3)
    assert asyncio.run(drain_unread(PLAIN, sending)) and sending.calls == 3


@pytest.mark.parametrize("scope", [PLAIN, EXPECTING], ids=["plain", "expect-100-continue"])
def test_a_body_that_outgrows_the_limit_is_read_to_its_end_before_the_413(scope):
    """Once the body is arriving (an Expect client was sent 100 Continue by the first receive), the rest is read
    whatever the headers say, so the client finishes sending and reads the 413 instead of a reset."""
    body = Body([b"x" * 10] * 3)
    with pytest.raises(PayloadTooLarge):
        asyncio.run(read_body(scope, body, max_bytes=15))
    assert body.calls == 3
