"""Lesson errors: the network errors every program meets, provoked on purpose, caught, explained.

Run:   python -m socklab.lessons.errors_timeouts

Each scenario sets up a situation on 127.0.0.1, makes the call that fails, catches exactly the
exception Python raises, and says what it means and what a program should do about it.

At full strength: `socklab connect 127.0.0.1:1` says such an error in one line: socklab
translates them once, at one boundary, into named errors (src/socklab/core/errors.py:
ConnectionRefused, ConnectTimeout, BrokenError, AddressInUse...).
"""

import socket
import struct


def free_port() -> int:
    with socket.socket() as s:  # bind to port 0, note the port, close: nothing listens there now
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def refused() -> None:
    try:
        socket.create_connection(("127.0.0.1", free_port()), timeout=5)
    except ConnectionRefusedError as exc:
        print(f"1. connect to a port nobody listens on -> {exc!r}")
        print("   the host answered the SYN with RST. Check the port; is the server running?")


def timeout() -> None:
    with socket.create_server(("127.0.0.1", 0)) as lazy:  # listens, but never accept()s or sends
        with socket.create_connection(lazy.getsockname(), timeout=5) as sock:
            sock.settimeout(0.5)  # every recv()/send() on this socket now gives up after 0.5 s
            try:
                sock.recv(100)
            except TimeoutError as exc:
                print(f"2. recv from a server that never answers -> {exc!r}")
                print("   without settimeout() this recv() would block forever. Retry, or give up and say so.")


def reset() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname(), timeout=5)
        conn, _ = server.accept()
        # SO_LINGER with a zero timeout: close() sends RST instead of FIN (an abrupt end)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
        try:
            client.recv(100)
        except ConnectionResetError as exc:
            print(f"3. recv after the peer reset the connection -> {exc!r}")
            print("   the peer crashed or aborted. Drop this connection only; a server keeps serving others.")
        try:
            client.sendall(b"anyone there?")
        except (BrokenPipeError, ConnectionResetError) as exc:
            print(f"4. send on that dead connection -> {exc!r}")
            print("   (without catching it, this would end the program: one client's exit kills the server)")
        client.close()


def address_in_use() -> None:
    with socket.create_server(("127.0.0.1", 0)) as first:
        second = socket.socket()
        try:
            second.bind(first.getsockname())
        except OSError as exc:  # errno.EADDRINUSE
            print(f"5. bind to a port already taken -> {exc!r}")
            print("   another program (or an old copy of yours) listens there. SO_REUSEADDR only helps")
            print("   with connections left in TIME_WAIT, not against a live listener.")
        finally:
            second.close()


def closed_by_us() -> None:
    sock = socket.socket()
    sock.close()
    try:
        sock.send(b"x")
    except OSError as exc:  # EBADF: a bug in *our* program, not the network's doing
        print(f"6. send on a socket we already closed -> {exc!r}")
        print("   this one is a bug: find who closed it. The others describe the world; expect them.")


if __name__ == "__main__":
    refused()
    timeout()
    reset()
    address_in_use()
    closed_by_us()
