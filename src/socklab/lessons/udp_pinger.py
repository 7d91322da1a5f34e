"""Lesson udp-echo: a UDP pinger (the classic lab). Datagrams can be lost: a timeout says so.

Run:   python -m socklab.lessons.udp_pinger 127.0.0.1 7008 [COUNT]

Each ping is a datagram "ping N TIME"; the server sends it back. No reply within 1 s means the
request or the reply was lost (or nothing listens): the pinger counts it and goes on.

At full strength: `socklab echo client --udp 127.0.0.1:7008 -c 10` adds RTT statistics like
ping's, retries, IPv6 and a trace; `socklab tap :7009 --to :7008 --udp --fault loss:upstream,probability=0.2`
makes the loss real.
"""

import socket
import sys
import time


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit("usage: udp_pinger.py HOST PORT [COUNT]")
    server = (sys.argv[1], int(sys.argv[2]))
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # Without a timeout recvfrom() waits forever for a reply that was lost. With one, it
    # raises TimeoutError after 1 s.
    sock.settimeout(1.0)
    received = 0
    for seq in range(1, count + 1):
        sent_at = time.monotonic()  # monotonic: a clock that never jumps (unlike time.time())
        message = f"ping {seq} {sent_at:.6f}".encode()
        sock.sendto(message, server)  # no connect() needed: each datagram names its target
        try:
            while True:
                data, addr = sock.recvfrom(65535)
                # Anyone can send us a datagram: keep only the answer to *this* ping. A late
                # answer to an earlier ping (it was slow, not lost) is skipped.
                if addr[1] == server[1] and data == message:
                    break
            rtt_ms = (time.monotonic() - sent_at) * 1000
            received += 1
            print(f"reply from {addr[0]}:{addr[1]}: seq={seq} time={rtt_ms:.2f} ms", flush=True)
        except TimeoutError:
            print(f"request timed out: seq={seq}", flush=True)
        except ConnectionRefusedError:
            # On Linux an ICMP "port unreachable" can surface here: nothing listens there.
            print(f"seq={seq}: refused (is the server running?)", flush=True)
    lost = count - received
    print(f"{count} sent, {received} received, {100 * lost // count}% lost")
    sock.close()


if __name__ == "__main__":
    main()
