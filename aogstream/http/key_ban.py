"""CLIProxyAPI's failed-key ban on its management API, kept apart from the guard's policy.

`guard_policy.decide` is pure: it says whether one request's management key is right.
A ban is state across requests (how many wrong keys an address sent, and until when it
is refused), so it lives here, fed each decision on CPA's management routes
(`/v0/management/...`) by the ASGI guard. The rule is CPA's: an address that sent a
wrong key `BAN_AFTER` times is refused for `BAN_FOR` seconds, right key or not, and a
right key clears its count. It is counted in each serving process (no shared store:
the ban slows guessing down, it does not have to be exact across workers).
"""

from __future__ import annotations

import trio

from aogstream import errors
from aogstream.http.guard_policy import Decision

BAN_AFTER = 5  # wrong management keys from one address on CPA's API …
BAN_FOR = 30 * 60.0  # … refuse it this long (CPA's rule)
MAX_TRACKED = 10000  # addresses remembered at most (a flood of addresses resets the table)


class KeyBan:
    """Wrong management keys per client address, and the bans they earned."""

    def __init__(self) -> None:
        self._failures: dict[str, tuple[int, float]] = {}  # address -> (count, banned until)

    def check(self, client: str, decision: Decision) -> Decision:
        """`decision` for a request from `client` on CPA's management API, or a refusal
        when `client` is banned; counts a wrong key and clears the count on a right one."""
        now = trio.current_time()
        count, until = self._failures.get(client, (0, 0.0))
        if until > now:
            left = int(until - now) + 1
            return Decision(403, errors.KEY_REQUIRED, (
                f"too many wrong management keys from this address; try again in "
                f"{left // 60} min {left % 60} s"),
                cpa_error=f"IP banned due to too many failed attempts. Try again in "
                          f"{left}s")
        if decision.cpa_error == "invalid management key":
            count += 1
            if len(self._failures) > MAX_TRACKED:
                self._failures.clear()
            self._failures[client] = (0, now + BAN_FOR) if count >= BAN_AFTER \
                else (count, 0.0)
        elif decision.allowed and client in self._failures:
            del self._failures[client]
        return decision
