"""Which gateway members an agent dials, and when (sans-I/O: no sockets, no clocks).

An agent starts from one address, the seed (its key's, or a load-balanced name), and learns
the fleet's live members from each gateway's Welcome and Members frames. It runs one
connection loop per address (agent/app.py); this module keeps the rules those loops follow:

1. The addresses wanted are the seed and every member of the latest list. A list that
   names nobody (a gateway that does not say) changes nothing.
2. A member that leaves the list keeps its live connection until that connection ends;
   then its loop stops. A loop waiting to dial it stops at once.
3. A connection claims the member its Welcome named (the address dialled, when the gateway
   does not say). A loop does not dial a member another loop's live connection holds: the
   seed that reached member M through a balancer stands in for M's own loop until it ends.
4. The seed, when it is not itself a listed member, is the fallback: it dials only while
   no connection is live (to find the fleet again after every member it knew has gone).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class MemberState:
    """One connection loop's state, as the agent reports it."""

    address: str  # the address dialled
    connected: bool = False
    reached: str = ""  # the member the live connection's Welcome named
    connects: int = 0
    last_error: str = ""


@dataclass(frozen=True, slots=True)
class Changes:
    """What a new member list asks of the driver."""

    start: frozenset[str]  # addresses that need a loop
    retire: frozenset[str]  # loops whose address left the list (rule 2)


class Fleet:
    def __init__(self, seed: str) -> None:
        self.seed = seed
        self.known: tuple[str, ...] = ()
        self.states: dict[str, MemberState] = {}
        self._claims: dict[str, str] = {}  # member -> address of the loop connected to it

    def wanted(self) -> set[str]:
        return {self.seed, *self.known}

    def wants(self, address: str) -> bool:
        return address == self.seed or address in self.known

    def learn(self, members: Sequence[str]) -> Changes:
        """A gateway told the live members (rule 1)."""
        if not members:
            return Changes(frozenset(), frozenset())
        self.known = tuple(dict.fromkeys(members))
        wanted = self.wanted()
        return Changes(frozenset(wanted - set(self.states)), frozenset(set(self.states) - wanted))

    def started(self, address: str) -> MemberState:
        """A loop for `address` runs."""
        return self.states.setdefault(address, MemberState(address))

    def may_dial(self, address: str) -> bool:
        """Rules 3 and 4."""
        if address == self.seed and address not in self.known:
            return not self._claims
        holder = self._claims.get(address)
        return holder is None or holder == address

    def connected(self, address: str, member: str) -> None:
        """The loop of `address` was welcomed by `member` ("" when the gateway did not say)."""
        state = self.states[address]
        state.connected = True
        state.reached = member or address
        state.connects += 1
        state.last_error = ""
        # A claim another loop held is taken over: the gateway keeps the newer of two
        # connections of one agent, so the older one is ending anyway.
        self._claims[state.reached] = address

    def disconnected(self, address: str, error: str) -> None:
        state = self.states.get(address)
        if state is not None:
            state.connected = False
            state.reached = ""
            state.last_error = error
        for member, holder in list(self._claims.items()):
            if holder == address:
                del self._claims[member]

    def finish(self, address: str) -> bool:
        """The loop of `address`, not connected, asks whether to go on; False: it stops
        (rule 2) and its state is forgotten."""
        if self.wants(address):
            return True
        self.disconnected(address, "")
        self.states.pop(address, None)
        return False

    @property
    def any_connected(self) -> bool:
        return bool(self._claims)
