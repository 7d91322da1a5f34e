"""Lesson chat: a multi-client chat server with select(): lines in, lines out to the room.

Run: python -m socklab.lessons.chat_server 7070   Try: nc 127.0.0.1 7070 (/nick ann, /join #lobby, hi)
Check: socklab check chat 127.0.0.1:7070

It speaks the lab subset of docs/chat-protocol.md: /nick NAME, /join #room, /quit; any other
line is said in the room as "MSG #room NICK :TEXT". TCP delivers bytes, not lines: each client
gets a buffer, and only complete lines are handled.

At full strength: `socklab chat serve` adds history with sequence numbers, rate limits, slow-
consumer protection, WebSocket clients, Redis for many nodes, and a trace.
"""

import re
import select
import socket
import sys

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,23}")
buffers: dict[socket.socket, bytes] = {}  # per client: bytes received, not yet a whole line
nicks: dict[socket.socket, str] = {}
rooms: dict[socket.socket, str] = {}


def send(sock: socket.socket, line: str) -> None:
    try:  # sendall blocks if this client stops reading (the selectors lesson avoids that)
        sock.sendall(line.encode() + b"\n")
    except OSError:  # the client is gone; select() will report its EOF or reset: dropped then
        pass


def to_room(room: str, line: str) -> None:
    for sock, r in list(rooms.items()):
        if r == room:
            send(sock, line)  # the sender too, exactly once: its copy says "delivered"


def handle(sock: socket.socket, line: str) -> bool:
    """One complete line from a client. False: close this client."""
    nick = nicks.get(sock)
    cmd, _, arg = line.partition(" ")
    if any(ord(c) < 32 for c in line):  # control characters could drive other terminals
        send(sock, "ERR 422 :no control characters")
    elif cmd == "/quit":
        send(sock, "BYE :bye")
        return False
    elif cmd == "/nick":
        if not NAME.fullmatch(arg) or arg.lower() in (n.lower() for n in nicks.values()):
            send(sock, f"ERR 409 :nick {arg!r} is invalid or taken")
        else:
            nicks[sock] = arg
            send(sock, f"NICK {nick or '*'} {arg}")
    elif nick is None:
        send(sock, "ERR 401 :choose a nick first: /nick NAME")
    elif cmd == "/join" and re.fullmatch(r"#[A-Za-z0-9_-]{1,32}", arg):
        rooms[sock] = arg.lower()
        to_room(rooms[sock], f"JOIN {rooms[sock]} {nick}")
    elif line.startswith("/"):
        send(sock, "ERR 400 :commands: /nick NAME, /join #room, /quit")
    elif sock not in rooms:
        send(sock, "ERR 403 :join a room first: /join #room")
    elif line.strip():
        to_room(rooms[sock], f"MSG {rooms[sock]} {nick} :{line}")
    return True


def drop(sock: socket.socket) -> None:
    room, nick = rooms.pop(sock, None), nicks.pop(sock, None)
    buffers.pop(sock, None)
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
