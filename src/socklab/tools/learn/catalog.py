"""The lessons, grouped by the objective they teach, with their scenes and planted mistakes.

Why this exists: ``socklab learn`` lists and walks through lessons from this one table, the tests
run every lesson and every planted mistake from it, and docs/learn.md follows it. A lesson is
data: its programs (modules under :mod:`socklab.lessons`), the server to start, the scenes to
play, the ``socklab check`` that grades it, and the classic mistakes an exercise plants (a text
replacement in the lesson's source, and the probe whose failure names it).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LESSONS", "OBJECTIVES", "Lesson", "Mistake", "find_lesson"]


@dataclass(frozen=True)
class Mistake:
    """A classic mistake planted in a copy of the lesson: ``find`` becomes ``replace``.

    ``probe`` is the check's probe that fails because of it, and ``explains`` a phrase of the
    grader's explanation (the tests hold the grader to both).
    """

    name: str
    find: str
    replace: str
    probe: str
    explains: str


@dataclass(frozen=True)
class Lesson:
    name: str
    objective: str
    title: str
    programs: tuple[str, ...]  # modules in socklab.lessons, the first one is the exercise's
    scenes: tuple[str, ...]
    server: str | None = None  # the module started before the scenes
    server_args: tuple[str, ...] = ()  # after the port; "{work}" is a scratch directory
    check: str | None = None  # "echo --iterative": the socklab check that grades the server
    port: int = 7007  # the port the exercise's instructions use
    mistakes: tuple[Mistake, ...] = ()
    full_strength: str = ""
    try_this: str = ""  # the exercise when no mistake is planted
    server_stdin: bool = False  # the server reads lines typed (the peer)


OBJECTIVES = (
    "TCP clients and servers",
    "UDP datagrams",
    "the socket lifecycle",
    "many clients: threads",
    "many clients: select() and poll()",
    "echo and chat applications",
    "errors and timeouts",
    "classic uses: web, file transfer, RPC, peer-to-peer",
    "debugging with ss- and tcpdump-like tools",
)

_SEND_ALL = "        conn.sendall(data)\n"
NO_CLOSE = Mistake("no-close", "            finally:\n                conn.close()  # our FIN: without it the "
                   "socket stays in CLOSE_WAIT\n", "", "half_close", "CLOSE_WAIT")

LESSONS: tuple[Lesson, ...] = (
    Lesson("tcp-echo", OBJECTIVES[0], "an iterative TCP echo server and its client",
           ("tcp_echo_server", "tcp_echo_client"), ("tcp-client", "iterative"),
           server="tcp_echo_server", check="echo --iterative",
           mistakes=(
               Mistake("one-recv", _SEND_ALL, _SEND_ALL + "        break\n", "small", "answers one recv()"),
               NO_CLOSE,
           ),
           full_strength="socklab echo serve --engine iterative --trace"),
    Lesson("udp-echo", OBJECTIVES[1], "a UDP echo server and a pinger with timeouts",
           ("udp_echo_server", "udp_pinger"), ("pinger", "pinger-nobody"),
           server="udp_echo_server", check="echo --udp", port=7008,
           mistakes=(Mistake("small-buffer", "sock.recvfrom(65535)", "sock.recvfrom(1024)", "large",
                             "recvfrom(1024) is too small"),),
           full_strength="socklab echo serve --udp --trace"),
    Lesson("lifecycle", OBJECTIVES[2], "create, bind, listen, connect, accept, send, recv, shutdown, close",
           ("lifecycle",), ("lifecycle",), full_strength="socklab echo serve --trace",
           try_this="move client.close() before conn.close() and predict which side ends in TIME_WAIT; "
                    "check with: socklab trace run --explain -- python lifecycle.py"),
    Lesson("threaded", OBJECTIVES[3], "a thread per client", ("threaded_server",), ("concurrent",),
           server="threaded_server", check="echo",
           mistakes=(Mistake("no-thread",
                             "            threading.Thread(target=serve_one, args=(conn, addr), daemon=True).start()\n",
                             "            serve_one(conn, addr)\n", "second_client", "iterative"),),
           full_strength="socklab echo serve --engine threads"),
    Lesson("select", OBJECTIVES[4], "one thread, many clients, select()", ("select_server",), ("concurrent",),
           server="select_server", check="echo",
           mistakes=(Mistake("one-recv", "                        sock.sendall(data)\n                        continue\n",
                             "                        sock.sendall(data)\n", "small", "answers one recv()"),),
           full_strength="socklab echo serve --engine select"),
    Lesson("selectors", OBJECTIVES[4], "poll/epoll with selectors and non-blocking sockets",
           ("selectors_server",), ("concurrent", "slow-reader"), server="selectors_server", check="echo",
           mistakes=(Mistake("partial-send", "    pending[conn] = pending[conn][sent:]\n",
                             "    pending[conn] = b\"\"\n", "slow_reader", "how much send() took"),),
           full_strength="socklab echo serve --engine epoll"),
    Lesson("chat", OBJECTIVES[5], "a select() chat server (lines, rooms) and a client", ("chat_server", "chat_client"),
           ("chat",), server="chat_server", check="chat", port=7070,
           mistakes=(
               Mistake("buffer", "            buffers[sock] += data\n", "            buffers[sock] = data\n",
                       "partial_line", "replaces its buffer"),
               Mistake("twice", '        to_room(rooms[sock], f"MSG {rooms[sock]} {nick} :{line}")\n',
                       '        to_room(rooms[sock], f"MSG {rooms[sock]} {nick} :{line}")\n'
                       '        send(sock, f"MSG {rooms[sock]} {nick} :{line}")\n', "message", "2 times"),
               Mistake("crash", "            try:\n                data = sock.recv(4096)\n            except OSError:"
                       "  # reset: the client vanished\n                data = b\"\"\n",
                       "            data = sock.recv(4096)\n", "vanish", "crashed or stopped serving"),
           ),
           full_strength="socklab chat serve"),
    Lesson("errors", OBJECTIVES[6], "refused, timed out, reset, broken pipe, address in use",
           ("errors_timeouts",), ("errors",), full_strength="socklab connect 127.0.0.1:1",
           try_this="add a scenario: connect to 10.255.255.1 with a 1 s timeout - which exception, and why "
                    "not ConnectionRefusedError?"),
    Lesson("web", OBJECTIVES[7], "a small HTTP/1.1 file server (the classic lab)", ("web_server",), ("web",),
           server="web_server", server_args=("{work}/www",), check="http --root www", port=8080,
           mistakes=(
               Mistake("single-recv", '                while b"\\r\\n\\r\\n" not in buffer:',
                       '                if b"\\r\\n\\r\\n" not in buffer:', "pieces", "single recv()"),
               Mistake("no-length", 'f"HTTP/1.1 {status}\\r\\nContent-Length: {len(body)}\\r\\n"',
                       'f"HTTP/1.1 {status}\\r\\n"', "content_length", "without a Content-Length"),
               Mistake("traversal", "if not path.is_relative_to(ROOT) or not path.is_file():",
                       "if not path.is_file():", "traversal", "path traversal"),
           ),
           full_strength="socklab http serve DIR"),
    Lesson("file", OBJECTIVES[7], "file transfer with a size header", ("file_server", "file_client"), ("file",),
           server="file_server", server_args=("{work}/shared",), full_strength="socklab send / socklab receive",
           try_this="cut the transfer (stop the server mid-way) and see the client keep the .part file; then "
                    "add resume: send the offset you already have"),
    Lesson("rpc", OBJECTIVES[7], "remote calls: one JSON object per line", ("rpc_server", "rpc_client"), ("rpc",),
           server="rpc_server", full_strength="socklab rpc serve --demo / socklab rpc call",
           try_this="add a method 'sleep' and a client timeout: when the call times out, did it run?"),
    Lesson("p2p", OBJECTIVES[7], "peer-to-peer: every node a server and a client", ("peer",), ("peers",),
           server="peer", server_stdin=True, full_strength="socklab peer",
           try_this="start three nodes in a line (A <- B <- C): does C see A's lines? Add forwarding, then "
                    "stop the echo storm with a message id"),
    Lesson("debug", OBJECTIVES[8], "find a leak with socklab ss and socklab trace run", ("tcp_echo_server",),
           ("close-wait",), check="echo --iterative", mistakes=(NO_CLOSE,),
           full_strength="socklab ss --explain, socklab trace run, socklab tap --pcap"),
)


def find_lesson(name: str) -> Lesson | None:
    for lesson in LESSONS:
        if lesson.name == name:
            return lesson
    return None
