"""Lesson chat: a chat client that waits on two things at once - the keyboard and the server.

Run:   python -m socklab.lessons.chat_client 127.0.0.1 7070 ann      (then type lines)

A blocking input() would miss what others say while you type nothing; a blocking recv() would
ignore the keyboard. select() watches both (on Linux/macOS stdin is a file descriptor too).

At full strength: `socklab chat connect 127.0.0.1:7070 --nick ann` adds line editing, history
catch-up after a reconnect, TLS, and escapes what others send so it cannot drive your terminal.
"""

import select
import socket
import sys


def show(line: bytes) -> None:
    text = line.decode("utf-8", "replace")
    # Text from the network never reaches the terminal raw: an ESC could drive it.
    print("".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text), flush=True)


def main() -> None:
    if len(sys.argv) < 4:
        sys.exit("usage: chat_client.py HOST PORT NICK")
    sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    sock.settimeout(None)  # from here on select() tells us when recv() will not block
    sock.sendall(f"/nick {sys.argv[3]}\n/join #lobby\n".encode())
    buffer = b""
    watched = [sock, sys.stdin]
    while True:
        readable, _, _ = select.select(watched, [], [])
        if sys.stdin in readable:
            line = sys.stdin.readline()
            if not line:  # Ctrl-D: say goodbye, and keep reading until the server closes
                sock.sendall(b"/quit\n")
                watched.remove(sys.stdin)  # at EOF stdin stays "readable" forever: stop watching it
            else:
                sock.sendall(line.encode())
        if sock in readable:
            data = sock.recv(4096)
            if not data:
                print("server closed the connection")
                break
            buffer += data
            while b"\n" in buffer:  # show whole lines only; keep the tail for the next recv()
                line_bytes, buffer = buffer.split(b"\n", 1)
                show(line_bytes.rstrip(b"\r"))
    sock.close()


if __name__ == "__main__":
    main()
