"""Lesson p2p: every node is a server AND a client. Lines typed are sent to every linked peer.

Run:   python -m socklab.lessons.peer 7101                      (first node)
       python -m socklab.lessons.peer 7102 127.0.0.1:7101       (second node, links to the first)

A thread accepts peers that dial us; the main thread dials the peers named on the command line;
each link gets a reader thread. Both directions end up the same: a socket to a peer.

At full strength: `socklab peer` adds flooding across many hops with de-duplication, discovery
by multicast, reconnects, a mutual-TLS mesh and file sharing (docs/peer.md).
"""

import socket
import sys
import threading

links: list[socket.socket] = []
lock = threading.Lock()  # several threads change `links`: one at a time


def reader(sock: socket.socket, name: str) -> None:
    buffer = b""
    try:
        while chunk := sock.recv(4096):
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                text = line.decode("utf-8", "replace")
                print(f"[{name}] " + "".join(c if c.isprintable() else "?" for c in text), flush=True)
    except OSError:
        pass
    with lock:
        links.remove(sock)
    sock.close()
    print(f"peer {name} left", flush=True)


def link(sock: socket.socket, name: str) -> None:
    with lock:
        links.append(sock)
    print(f"linked with {name}", flush=True)
    threading.Thread(target=reader, args=(sock, name), daemon=True).start()


def accept_loop(listener: socket.socket) -> None:
    while True:
        conn, addr = listener.accept()
        link(conn, f"{addr[0]}:{addr[1]}")


def main() -> None:
    listener = socket.create_server(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 7101))
    print("listening on {}:{}".format(*listener.getsockname()), flush=True)
    threading.Thread(target=accept_loop, args=(listener,), daemon=True).start()
    for target in sys.argv[2:]:
        host, port = target.rsplit(":", 1)
        try:
            link(socket.create_connection((host, int(port)), timeout=5), target)
        except OSError as exc:
            print(f"could not reach {target}: {exc}", flush=True)
    try:
        for line in sys.stdin:  # send each typed line to every peer; a dead one is skipped
            with lock:
                for sock in list(links):
                    try:
                        sock.sendall(line.encode())
                    except OSError:
                        pass  # its reader thread sees the error too and removes it
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
