"""Lesson lifecycle: one program plays both sides and prints each step of a TCP connection.

Run:   python -m socklab.lessons.lifecycle

create -> bind -> listen -> (client) connect -> accept -> send -> recv -> shutdown -> recv
returns b"" -> close. It runs in one thread: the kernel completes the handshake by itself
(connect() returns before the server calls accept()), and a few bytes fit in the socket
buffers, so nothing here has to wait for the other side.

At full strength: `socklab echo serve --trace` and `socklab echo client --trace` print the same
steps for real programs, with each socket's TCP state; `socklab ss --explain` shows the states.
"""

import socket


def step(text: str) -> None:
    print(f"-> {text}", flush=True)


def main() -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    step(f"socket(): server socket, fd {server.fileno()} - not on the network yet")
    server.bind(("127.0.0.1", 0))  # port 0: the kernel picks a free port
    step(f"bind(): it owns {server.getsockname()[0]}:{server.getsockname()[1]}")
    server.listen(1)
    step("listen(): LISTEN - the kernel now answers SYNs and queues finished handshakes")

    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.connect(server.getsockname())  # SYN, SYN-ACK, ACK: both kernels do this
    step(f"connect(): ESTABLISHED from {client.getsockname()[1]} - accept() not even called yet")

    conn, addr = server.accept()
    step(f"accept(): a NEW socket (fd {conn.fileno()}) for {addr[0]}:{addr[1]}; fd {server.fileno()} keeps listening")

    sent = client.send(b"hello")
    step(f"client send(): {sent} bytes handed to the kernel (not yet read by anyone)")
    step(f"server recv(): {conn.recv(1024)!r} - the bytes, however they were split on the way")

    client.shutdown(socket.SHUT_WR)
    step("client shutdown(SHUT_WR): FIN sent - 'I will send no more', but it can still receive")
    step(f"server recv(): {conn.recv(1024)!r} - b'' is how EOF looks; the server is in CLOSE_WAIT")

    conn.sendall(b"bye")  # a half-closed connection still carries data the other way
    step(f"client recv(): {client.recv(1024)!r} - the other direction still works")
    conn.close()
    step("server close(): its FIN goes out; its fd is released (no CLOSE_WAIT left)")
    step(f"client recv(): {client.recv(1024)!r} - EOF on this side too")
    client.close()
    step("client close(): both done; the side that closed first keeps TIME_WAIT ~60 s")
    server.close()
    step("listening socket closed: new connections are now refused")


if __name__ == "__main__":
    main()
