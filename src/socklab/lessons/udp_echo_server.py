"""Lesson udp-echo: a UDP echo server. Each datagram goes back, whole, to whoever sent it.

Run:   python -m socklab.lessons.udp_echo_server 7008     (port 0: the kernel picks one)
Try:   python -m socklab.lessons.udp_pinger 127.0.0.1 7008
Check: socklab check echo --udp 127.0.0.1:7008

UDP has no connections: no listen(), no accept(), no EOF. One socket talks to every peer;
each recvfrom() returns one whole datagram and the address it came from.

At full strength: `socklab echo serve --udp --port 7008 --trace` adds a trace of every datagram,
every engine, and limits; `socklab tftp` builds a reliable transfer out of datagrams.
"""

import socket
import sys


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 7008
    # SOCK_DGRAM: datagrams. Each sendto() is one packet; it arrives whole, or not at all.
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))  # bind() is all a UDP server needs before receiving
    host, port = sock.getsockname()
    print(f"listening on {host}:{port}", flush=True)
    try:
        while True:  # one turn per datagram, from any peer
            # recvfrom(65535): one datagram and its sender. The size matters: a datagram
            # longer than the buffer is cut, and the rest is thrown away without an error.
            data, addr = sock.recvfrom(65535)
            try:
                # Answer the address this datagram came from (never a "current client").
                sock.sendto(data, addr)
            except OSError as exc:
                # A send can fail (the peer's network is gone, buffers are full). UDP is
                # best-effort: drop this reply, keep serving everyone else.
                print(f"could not answer {addr[0]}:{addr[1]}: {exc}", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()


if __name__ == "__main__":
    main()
