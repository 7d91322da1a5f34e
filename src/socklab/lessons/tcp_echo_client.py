"""Lesson tcp-echo: a TCP client. It sends each message and reads until all of it came back.

Run:   python -m socklab.lessons.tcp_echo_client 127.0.0.1 7007 hello "second message"
       (no messages: it reads lines you type, Ctrl-D to finish)

At full strength: `socklab echo client 127.0.0.1:7007 --trace` adds round-trip times, a ping
mode with loss statistics, TLS, IPv6 and a trace of every socket call.
"""

import socket
import sys


def echo_once(sock: socket.socket, message: bytes) -> bytes:
    """Send one message, then read until as many bytes came back."""
    sock.sendall(message)  # sendall(): send() may take only part; this loops until all is sent
    reply = b""
    # Why a loop: TCP is a byte stream. The echo may arrive in several pieces, so one recv()
    # can return part of it. Keep reading until we have as many bytes as we sent.
    while len(reply) < len(message):
        chunk = sock.recv(4096)
        if not chunk:  # b"": the server closed before echoing everything
            raise ConnectionError(f"server closed after {len(reply)} of {len(message)} bytes")
        reply += chunk
    return reply


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit("usage: tcp_echo_client.py HOST PORT [MESSAGE...]")
    host, port = sys.argv[1], int(sys.argv[2])
    messages = sys.argv[3:] or (line.rstrip("\n") for line in sys.stdin)
    try:
        # create_connection(): socket() + connect(), trying each address the name resolves to.
        # connect() starts the handshake (SYN, SYN-ACK, ACK) and returns once it completed.
        sock = socket.create_connection((host, port), timeout=5)
    except ConnectionRefusedError:
        # The server's kernel answered our SYN with RST: nothing listens on that port.
        sys.exit(f"connection refused: is the server running on {host}:{port}?")
    except TimeoutError:
        sys.exit(f"no answer from {host}:{port} in 5 s (a firewall dropping packets?)")
    # The timeout set above now applies to every recv()/send(): a server that never answers
    # raises TimeoutError instead of blocking this program forever.
    with sock:
        try:
            for text in messages:
                reply = echo_once(sock, (text + "\n").encode())
                print(f"sent {text!r}, got back {reply.decode(errors='replace')!r}")
            # shutdown(SHUT_WR): "I will send no more" - the server's recv() returns b"".
            sock.shutdown(socket.SHUT_WR)
            # The server closes in turn; our recv() then returns b"" too.
            print("server closed too" if sock.recv(4096) == b"" else "server sent more data!")
        except TimeoutError:
            sys.exit("the server did not answer within 5 s")
        except OSError as exc:  # ConnectionResetError, BrokenPipeError, ConnectionError...
            sys.exit(f"connection failed: {exc}")
    # leaving the with-block calls close(): the socket's file descriptor is released


if __name__ == "__main__":
    main()
