"""Lesson threaded: a thread per client, so a second client no longer waits for the first.

Run:   python -m socklab.lessons.threaded_server 7007
Check: socklab check echo 127.0.0.1:7007

The accept loop only accepts; each client's loop (the same as in tcp_echo_server) runs in its
own thread. Threads are simple and blocking code stays readable; the cost is a stack and a
kernel thread per client, so thousands of clients need select/epoll instead.

At full strength: `socklab echo serve --engine threads` (or `--engine pool`, a bounded pool of
threads) adds connection limits, idle timeouts, graceful shutdown and a trace.
"""

import socket
import sys
import threading


def serve_one(conn: socket.socket, addr: tuple[str, int]) -> None:
    """Echo one client until it closes. Runs in its own thread."""
    # The with-block closes the socket however the function ends (even on an exception).
    with conn:
        try:
            while True:
                data = conn.recv(4096)  # blocks this thread only; the others carry on
                if not data:  # b"": the client closed its side
                    break
                conn.sendall(data)
        except OSError as exc:
            # An exception in a thread does not stop the server, but unhandled it prints
            # a traceback: say in one line what happened to this client instead.
            print(f"client {addr[0]}:{addr[1]} failed: {exc}", flush=True)


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 7007
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)  # a longer queue: many clients may connect at the same moment
    host, port = listener.getsockname()
    print(f"listening on {host}:{port}", flush=True)
    try:
        while True:
            conn, addr = listener.accept()
            # Start the client's thread and go straight back to accept(). Do NOT call recv()
            # here: a client that sends nothing would block every new client.
            # daemon=True: these threads do not keep the program alive after Ctrl-C.
            threading.Thread(target=serve_one, args=(conn, addr), daemon=True).start()
    except KeyboardInterrupt:
        pass
    finally:
        listener.close()


if __name__ == "__main__":
    main()
