"""``socklab check``: a grader that knows sockets (echo, HTTP and chat servers).

Each protocol's probes live in their own module (:mod:`.echo`, :mod:`.http`, :mod:`.chat`);
:mod:`.report` holds the verdicts and their formats, :mod:`.net` the bounded socket helpers and
:mod:`.cli` the command.
"""
