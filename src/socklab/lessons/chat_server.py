"""Lesson chat: a multi-client chat server with select(): lines in, lines out to the room.

Run: python -m socklab.lessons.chat_server 7070   Try: nc 127.0.0.1 7070 (/nick ann, /join #lobby, hi)
Check: socklab check chat 127.0.0.1:7070
It speaks the lab subset of docs/chat-protocol.md. TCP delivers bytes, not lines: each client
gets a buffer, and only complete lines are handled.
At full strength: `socklab chat serve` adds history, rate limits, slow-consumer protection,
WebSocket clients, Redis for many nodes, and a trace.
"""

import re
import select
import socket
import sys

NICK = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,23}")
ROOM = re.compile(r"#[A-Za-z0-9_-]{1,32}")
buffers: dict[socket.socket, bytes] = {}  # per client: bytes received, not yet a whole line
nicks: dict[socket.socket, str] = {}
rooms: dict[socket.socket, str] = {}


def send(sock: socket.socket, line: str) -> None:
    try:  # sendall blocks if this client stops reading (the selectors lesson avoids that)
        sock.sendall(line.encode() + b"\n")
    except OSError:  # the client is gone; select() will report its EOF or reset: dropped then
        pass


def to_room(room: str, line: str) -> None:
    for sock in [s for s, r in rooms.items() if r == room]:
        send(sock, line)  # the sender too, exactly once: its copy says "delivered"


def handle(sock: socket.socket, line: str) -> bool:
    """One complete line from a client. False: close this client."""
    cmd, _, arg = line.partition(" ")
    nick = nicks.get(sock)
    if any(ord(c) < 32 for c in line):  # control characters could drive other terminals
        send(sock, "ERR 422 :no control characters")
    elif cmd == "/quit":
        send(sock, "BYE :bye")
        return False
    elif cmd == "/nick" and NICK.fullmatch(arg) and arg.lower() not in {n.lower() for n in nicks.values()}:
        nicks[sock] = arg
        send(sock, f"NICK {nick or '*'} {arg}")
    elif cmd == "/nick" or nick is None:
        send(sock, "ERR 409 :choose a valid nick nobody has: /nick NAME")
    elif cmd == "/join" and ROOM.fullmatch(arg):
        rooms[sock] = arg.lower()
        to_room(rooms[sock], f"JOIN {rooms[sock]} {nick}")
    elif line.startswith("/") or sock not in rooms:
        send(sock, "ERR 400 :commands: /nick NAME, /join #room, /quit; join a room to talk")
    elif line.strip():
        to_room(rooms[sock], f"MSG {rooms[sock]} {nick} :{line}")
    return True


def drop(sock: socket.socket) -> None:
    room, nick, _ = rooms.pop(sock, None), nicks.pop(sock, None), buffers.pop(sock, None)
    sock.close()  # then tell the room, so nobody is sent to a closed socket
    if room and nick:
        to_room(room, f"PART {room} {nick} :left")


def serve(listener: socket.socket) -> None:
    while True:
        readable, _, _ = select.select([listener, *buffers], [], [])
        for sock in readable:
            if sock is listener:
                conn, _ = listener.accept()
                buffers[conn] = b""
                send(conn, "HELLO lesson-chat 1 :choose a nick with /nick NAME")
                continue
            try:
                data = sock.recv(4096)
            except OSError:  # reset: the client vanished
                data = b""
            if not data:
                drop(sock)
                continue
            buffers[sock] += data
            # handle every complete line; keep the unfinished tail for the next recv()
            while sock in buffers and b"\n" in buffers[sock]:
                raw, buffers[sock] = buffers[sock].split(b"\n", 1)
                if not handle(sock, raw.decode("utf-8", "replace").rstrip("\r")):
                    drop(sock)
            if sock in buffers and len(buffers[sock]) > 4096:  # a "line" without end: refuse it
                send(sock, "ERR 413 :line too long")
                drop(sock)


def main() -> None:
    listener = socket.create_server(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 7070))
    print("listening on {}:{}".format(*listener.getsockname()), flush=True)
    try:
        serve(listener)
    except KeyboardInterrupt:  # Ctrl-C: leave quietly
        pass


if __name__ == "__main__":
    main()
