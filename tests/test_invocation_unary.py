"""A unary invocation's answer: kept in a slot rather than a channel, with the same
behaviour a channel gave.

Real parts: `open_invocation` and `Invocation` as the gateway uses them, under trio.
The providers are small in-test classes (this is a unit test of one module): each
does one thing a real provider may do (answer, fail, answer then fail, never answer).

Proven:
- a unary call's answer comes back from `result()` with no schedule point taken for it;
- a provider that ends without an answer, or fails, gives `result()` the error (its own,
  the "ended without an answer" one, or the deadline's), as before;
- an answer emitted before a failure is still the answer;
- code that reads `responses` on a unary call still gets the answer, then the end;
- an invocation made by hand and driven in another task (not inline) still hands its
  answer to a `result()` that was already waiting for it.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from aogstream import errors
from aogstream.invocation import Invocation, Mode, open_invocation


class _Provider:
    """Just enough of `invocation.Provider` for `open_invocation`."""

    name = "p"

    def __init__(self, answer: bytes | None = None, error: Exception | None = None,
                 hang: bool = False) -> None:
        self.answer, self.error, self.hang = answer, error, hang

    async def serve(self, inv: Invocation) -> None:
        if self.hang:
            await trio.sleep_forever()
        if self.answer is not None:
            await inv.emit(self.answer)
        if self.error is not None:
            raise self.error


async def _result(provider: Any, timeout: float | None = None) -> bytes:
    async with open_invocation(provider, "chat", Mode.UNARY, b"{}", timeout=timeout) as inv:
        return await inv.result()


def test_a_unary_answer_comes_back_without_a_schedule_point() -> None:
    async def main() -> None:
        async with open_invocation(_Provider(b"ok"), "chat", Mode.UNARY, b"{}",
                                   timeout=None) as inv:
            with trio.testing.assert_no_checkpoints():
                assert await inv.result() == b"ok"

    trio.run(main)


def test_errors_reach_result_as_before() -> None:
    async def main() -> None:
        with pytest.raises(errors.GatewayError) as caught:
            await _result(_Provider())
        assert caught.value.bcode is errors.PLUGIN_SERVICE_ERROR
        assert "ended without an answer" in caught.value.message
        own = errors.GatewayError(errors.BAD_REQUEST, "bad model")
        with pytest.raises(errors.GatewayError) as caught:
            await _result(_Provider(error=own))
        assert caught.value is own
        with pytest.raises(errors.GatewayError) as caught:
            await _result(_Provider(hang=True), timeout=0.01)
        assert caught.value.bcode is errors.PLUGIN_TIMEOUT
        # answered, then failed: the answer stands
        assert await _result(_Provider(b"ok", error=own)) == b"ok"

    trio.run(main)


def test_reading_responses_of_a_unary_call_gives_the_answer_then_the_end() -> None:
    async def main() -> None:
        async with open_invocation(_Provider(b"ok"), "chat", Mode.UNARY, b"{}",
                                   timeout=None) as inv:
            assert [item async for item in inv.responses] == [b"ok"]

    trio.run(main)


def test_a_result_already_waiting_gets_the_answer_of_a_call_driven_elsewhere() -> None:
    async def main() -> None:
        inv = Invocation("chat", Mode.UNARY, b"{}", timeout=None)
        got: list[bytes] = []

        async def wait() -> None:
            got.append(await inv.result())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            await inv._drive(_Provider(b"late"))
        assert got == [b"late"]

    trio.run(main)
