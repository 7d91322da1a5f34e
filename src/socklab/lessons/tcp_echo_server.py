"""Lesson tcp-echo: the smallest correct TCP server. It sends back every byte it receives.

Run:   python -m socklab.lessons.tcp_echo_server 7007     (port 0: the kernel picks one)
Try:   python -m socklab.lessons.tcp_echo_client 127.0.0.1 7007
Check: socklab check echo --iterative 127.0.0.1:7007

This server is *iterative*: it serves one client from connect to close, then the next. While
one client is connected, a second one waits in the kernel's accept queue. Lessons `threaded`,
`select` and `selectors` lift that limit.

At full strength: `socklab echo serve --engine iterative --trace` is the same loop on socklab's
engine; it adds timeouts, connection limits, graceful shutdown, TLS and a trace of every call.
"""

import socket
import sys


def serve_one(conn: socket.socket) -> None:
    """Echo everything one client sends until it closes its side."""
    while True:
        # recv() blocks until at least 1 byte arrived, and returns *up to* 4096 bytes: a message
        # the client sent in one call can arrive in pieces, several can arrive together.
        data = conn.recv(4096)
        if not data:
            # b"" means the client closed (or shut down) its side: EOF. It never returns b""
            # otherwise. Forgetting this check makes the loop spin forever.
            return
        # send() may send only part of the bytes (it returns how many); sendall() loops for us.
        conn.sendall(data)


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 7007
    # socket(): a TCP (SOCK_STREAM) endpoint for IPv4 (AF_INET). Nothing is on the network yet.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Without SO_REUSEADDR a restarted server fails with EADDRINUSE while old connections sit in
    # TIME_WAIT for a minute.
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # bind(): claim the address. 127.0.0.1 is this machine only; "" would be every interface.
    listener.bind(("127.0.0.1", port))
    # listen(): become a server; the kernel now completes handshakes and queues up to 16 of them.
    listener.listen(16)
    host, port = listener.getsockname()
    print(f"listening on {host}:{port}", flush=True)  # the readiness line tests wait for
    try:
        while True:  # one turn per client: this loop is what makes the server iterative
            # accept() blocks until a client connected; it returns a NEW socket for that client.
            conn, addr = listener.accept()
            print(f"client {addr[0]}:{addr[1]} connected", flush=True)
            try:
                serve_one(conn)
            except OSError as exc:
                # A client that resets (RST) raises ConnectionResetError in recv() or send().
                # It is that client's problem, not the server's: log it and serve the next one.
                print(f"client {addr[0]}:{addr[1]} failed: {exc}", flush=True)
            finally:
                conn.close()  # our FIN: without it the socket stays in CLOSE_WAIT
            print(f"client {addr[0]}:{addr[1]} left", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        listener.close()


if __name__ == "__main__":
    main()
