"""``socklab trace run`` and ``socklab trace view``: any program's socket lifecycle, and the ladder diagram.

Modules, from the bytes up: :mod:`.strace_parse` (strace's lines -> system calls, sans-I/O),
:mod:`.decode` (argument text -> addresses and counts), :mod:`.lifecycle` (system calls -> socket
events with the mistake notes), :mod:`.tcp_state` (the TCP state machine as a table) and
:mod:`.sockinfo` (what is known of one socket), :mod:`.events` (the event and its ``--trace`` line), :mod:`.run`
(strace, the FIFO, the kernel's table, the exit status), :mod:`.ladder` (trace files -> lanes and
arrows) and :mod:`.svg` (the page), :mod:`.cli` (the commands).
"""
