"""Who may hold a chat slot, and for how long without a nick: the hub's door.

Why this exists: a chat slot is cheap to take and was free to keep - 1,000 connections that never
chose a nick held every slot for the whole idle timeout (an hour), and the web page was refused too.
Three rules close that, each a named setting:

- **chat slots** (``max_connections``): the hub counts its members (line and WebSocket clients)
  itself; the engine admits ``web_reserve`` connections more, so the page still loads when every
  chat slot is taken;
- **per address** (``max_per_address``): one client address holds at most that many chat
  connections; the next one is told why and closed, while other addresses still get in;
- **a deadline to register** (``register_timeout``): a connection that has not chosen a nick by
  then is told why and closed. One timer serves every waiting connection: they wait in arrival
  order, which is deadline order (the timeout is the same for all), so each sweep only looks at
  the connections that are due.

Everything runs on the engine thread, like the hub.
"""

from __future__ import annotations

from collections.abc import Callable

from socklab.apps.chat.member import Member
from socklab.apps.chat.settings import ChatSettings
from socklab.core.transport import TimerHandle

__all__ = ["CallLater", "Door"]

CallLater = Callable[[float, Callable[[], None]], TimerHandle]


class Door:
    """Admission and registration deadlines for one hub.

    Args:
        settings: ``max_connections``, ``max_per_address``, ``register_timeout``.
        clock: monotonic seconds (the hub's).
        call_later: the engine's timer (``engine.call_later``); ``None`` turns deadlines off.
        expire: called with a member whose deadline passed without a nick (it closes it).
    """

    def __init__(self, settings: ChatSettings, clock: Callable[[], float], call_later: CallLater | None,
                 expire: Callable[[Member], None]) -> None:
        self.settings = settings
        self.clock = clock
        self.call_later = call_later
        self.expire = expire
        self.per_address: dict[str, int] = {}
        self.waiting: dict[int, tuple[float, Member]] = {}  # no nick yet, oldest first
        self._timer: TimerHandle | None = None
        self.refused = 0
        self.expired = 0

    def refusal(self, member: Member, members: int) -> str | None:
        """Why ``member`` may not come in (one line for its ``BYE``), or ``None``."""
        s = self.settings
        if members >= s.max_connections:
            return f"server full ({s.max_connections} chat connections, max_connections); try again later"
        cap = s.max_per_address
        if cap and member.address is not None and self.per_address.get(member.address, 0) >= cap:
            return (f"too many connections from {member.address} ({cap}, max_per_address); close one "
                    "and try again")
        return None

    def admit(self, member: Member) -> None:
        """``member`` is in: count it, and start its deadline to choose a nick."""
        if member.address is not None:
            self.per_address[member.address] = self.per_address.get(member.address, 0) + 1
        member.admitted = True
        if self.settings.register_timeout > 0 and self.call_later is not None:
            self.waiting[member.id] = (self.clock() + self.settings.register_timeout, member)
            self._arm()

    def registered(self, member: Member) -> None:
        """``member`` chose a nick: no deadline any more."""
        self.waiting.pop(member.id, None)

    def leave(self, member: Member) -> None:
        """``member`` is gone: free its place. Idempotent."""
        self.waiting.pop(member.id, None)
        if not member.admitted:
            return
        member.admitted = False
        address = member.address
        if address is not None:
            n = self.per_address.get(address, 0) - 1
            if n > 0:
                self.per_address[address] = n
            else:
                self.per_address.pop(address, None)  # no trail of addresses that came and went

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.waiting.clear()

    def _arm(self) -> None:
        if self._timer is not None or not self.waiting or self.call_later is None:
            return
        first = next(iter(self.waiting.values()))[0]
        self._timer = self.call_later(max(0.0, first - self.clock()) + 0.005, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        now = self.clock()
        while self.waiting:
            mid, (deadline, member) = next(iter(self.waiting.items()))
            if deadline > now:
                break
            del self.waiting[mid]
            if not member.gone and member.nick is None:
                self.expired += 1
                self.expire(member)
        self._arm()
