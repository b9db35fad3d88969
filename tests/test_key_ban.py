"""CLIProxyAPI's failed-key ban on its management API (`aogstream.http.key_ban`), as a unit.

Real: the `KeyBan` the guard uses, fed the guard's real `decide` answers, on trio's
`MockClock` so the 30-minute ban is crossed without waiting. Proven: an address that sent
a wrong key `BAN_AFTER` times is refused even with the right key, until `BAN_FOR` has
passed; other addresses are not affected; a right key before the limit clears the count.
The end-to-end ban over a real gateway is in tests/test_native_frontend_auth.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio
import trio.testing

from aogstream import errors
from aogstream.http.guard_policy import Decision, Policy, Request, decide
from aogstream.http.key_ban import BAN_AFTER, BAN_FOR, KeyBan

POLICY = Policy(management_key="right-key")
PATH = "/v0/management/config"


def _answer(key: str) -> Decision:
    return decide(POLICY, Request(path=PATH, host="127.0.0.1", credentials=(key,)))


def _run(test: Callable[[trio.testing.MockClock], Awaitable[None]]) -> None:
    clock = trio.testing.MockClock()
    trio.run(test, clock, clock=clock)


def test_wrong_keys_ban_the_address_until_the_ban_ends() -> None:
    async def main(clock: trio.testing.MockClock) -> None:
        ban = KeyBan()
        for _ in range(BAN_AFTER):
            assert ban.check("10.0.0.1", _answer("wrong")).status == 401
        banned = ban.check("10.0.0.1", _answer("right-key"))
        assert banned.status == 403 and banned.bcode is errors.KEY_REQUIRED
        assert banned.cpa_error.startswith("IP banned due to too many failed attempts")
        assert ban.check("10.0.0.2", _answer("right-key")).allowed  # others unaffected
        clock.jump(BAN_FOR - 1)
        assert ban.check("10.0.0.1", _answer("right-key")).status == 403
        clock.jump(2)
        assert ban.check("10.0.0.1", _answer("right-key")).allowed

    _run(main)


def test_a_right_key_before_the_limit_clears_the_count() -> None:
    async def main(clock: trio.testing.MockClock) -> None:
        ban = KeyBan()
        for _ in range(BAN_AFTER - 1):
            ban.check("10.0.0.1", _answer("wrong"))
        assert ban.check("10.0.0.1", _answer("right-key")).allowed
        for _ in range(BAN_AFTER - 1):
            assert ban.check("10.0.0.1", _answer("wrong")).status == 401
        assert ban.check("10.0.0.1", _answer("right-key")).allowed

    _run(main)
