"""Lesson file: fetch a file; a short read is an error, not a smaller file.

Run:   python -m socklab.lessons.file_client 127.0.0.1 7090 notes.txt ./downloads

At full strength: `socklab receive` / `socklab send` (docs/transfer.md) verify every byte,
resume, and never leave a half-written file under the final name.
"""

import socket
import sys
from pathlib import Path


def main() -> None:
    if len(sys.argv) < 5:
        sys.exit("usage: file_client.py HOST PORT NAME DEST_DIR")
    host, port, name, dest = sys.argv[1], int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(name.encode() + b"\n")
        # the header: read up to "\n" (it may arrive with the first bytes of the file)
        data = b""
        while b"\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                sys.exit("the server closed before answering")
            data += chunk
        header, _, body = data.partition(b"\n")
        if not header.startswith(b"OK "):  # !r: text from the network never reaches the terminal raw
            sys.exit(f"refused: {header.decode(errors='replace')!r}")
        size = int(header[3:])
        target = dest / Path(name).name  # never trust a path: keep the last part only
        part = target.with_name(target.name + ".part")  # the final name only when complete
        with part.open("wb") as f:
            f.write(body)
            received = len(body)
            while received < size:
                chunk = sock.recv(min(65536, size - received))
                if not chunk:  # EOF before SIZE bytes: the transfer broke
                    sys.exit(f"connection lost after {received} of {size} bytes ({part} kept)")
                f.write(chunk)
                received += len(chunk)
        part.rename(target)
        print(f"received {target} ({size} bytes)")


if __name__ == "__main__":
    main()
