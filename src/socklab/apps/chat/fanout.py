"""Fan-out: one message to every member of a room, with one call per member and nothing more.

Why this exists: in a room of 10,000 members one message is 10,000 deliveries, so whatever is done
per member is done 100,000 times a second at 10 messages/s. A delivery costs the kernel's
``send()`` (4-8 µs on loopback on the project's 2-core VM, docs/benchmarks.md "Chat at 10,000
members": the part no Python removes) plus the Python around it, which this module keeps to
a loop step and one call:

- a message is encoded once (:class:`~socklab.apps.chat.member.Frame`) and every line member is
  handed the *same* ``bytes`` object (nothing is re-encoded or escaped per member);
- a line member whose transport takes bytes now (connected, not paused, not closing) offers its
  transport's ``write`` as :attr:`Member.fast_write`, and the loop calls that directly: no method
  of the member, no property, no flow-control check per write. The transport calls
  ``pause_writing`` inside the very write that takes its buffer past the high-water mark (every
  engine does; ``tests/apps/chat/test_fanout.py`` checks it on each), the member then withdraws
  ``fast_write`` at once, and its later frames take the slow path: its queue, bounded by
  ``max_queue``, then ``BYE`` and the disconnect. A member that never reads therefore holds at
  most ``max_buffer`` + ``max_queue`` (+ one batch) and never delays anybody else;
- every other member (a browser, a paused or closing connection) gets ``send_frame``;
- messages that became durable together (one store commit, one broker read) go to each member
  of a room as one write: :meth:`Room.send_batch`.

Everything runs on the engine thread, like the hub.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from socklab.apps.chat.member import Frame, Member

__all__ = ["Room"]


@dataclass
class Room:
    """A room with members on this node. It is freed when its last member here leaves; what must
    outlive it (the last sequence number, the topic) is kept by the hub in two flat tables."""

    name: str
    members: dict[int, Member] = field(default_factory=dict)
    names: list[str] | None = None  # the sorted nicks (/who), until somebody joins, leaves or renames

    def send(self, frame: Frame) -> int:
        """Write ``frame`` to every member here; returns how many members that was."""
        members = list(self.members.values())  # a failed write may close a member: it leaves the room
        data = frame.line  # encoded once, the same object for everybody
        for m in members:
            write = m.fast_write
            if write is None:
                m.send_frame(frame)
            else:
                write(data)
        return len(members)

    def send_batch(self, frames: list[Frame]) -> int:
        """Several frames, in order, as one write per member; returns the deliveries (members x frames)."""
        if len(frames) == 1:
            return self.send(frames[0])
        members = list(self.members.values())
        data = b"".join([f.line for f in frames])
        for m in members:
            write = m.fast_write
            if write is None:
                m.send_frames(frames)
            else:
                write(data)
        return len(members) * len(frames)
