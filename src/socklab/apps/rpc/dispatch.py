"""Running calls: the thread pool, the asyncio loop, timeouts, cancellation and back-pressure.

Why this exists: an RPC server must never let one slow handler freeze everybody else. The engine
thread only parses, decides and writes; the work happens elsewhere and its result comes back to
the engine through ``call_soon_threadsafe`` (the one thread-safe door into an engine):

- sync handlers run on a bounded :class:`HandlerPool` (``handler_threads``) that starts a thread
  only when the running ones are blocked - under pipelining one thread takes job after job
  instead of eight threads fighting for the GIL; ``inline`` ones run on the engine thread
  (cheap functions only);
- ``async def`` handlers run on the engine's own loop when the engine is ``asyncio`` or
  ``uvloop`` (no thread hop at all), and on one asyncio loop on a thread of its own otherwise, so
  they work on every engine;
- completions are queued and handed to the engine in bulk: under pipelining one wake-up carries
  many results;
- each connection's :class:`Session` caps its running calls (``max_concurrent_calls``); further
  requests wait in order and the transport stops reading that peer (back-pressure, not errors);
- the pool is shared fairly: each connection may hold at most ``threads_per_connection`` of its
  threads (half of them by default), and a free thread takes the next job of the connections in
  turn (round robin), so one client's batch of sixteen ``sleep(20)`` calls cannot keep another
  client's ``add`` waiting;
- a call running longer than ``call_timeout`` is answered -32001; ``$/cancelRequest`` answers it
  -32800 at once (idempotent: unknown or finished ids are ignored). A sync handler's thread cannot
  be killed: its late result is discarded. A coroutine is cancelled for real.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, Protocol

from socklab.apps.rpc.errors import RpcError
from socklab.apps.rpc.service import MethodSpec, Service
from socklab.core.errors import RemoteProtocolError
from socklab.core.transport import TimerHandle
from socklab.protocols import jsonrpc as j

__all__ = ["CANCEL_METHOD", "Dispatcher", "Session"]

CANCEL_METHOD = "$/cancelRequest"


class Cancellable(Protocol):
    """A running coroutine's handle (``concurrent.futures.Future`` or ``asyncio.Task``)."""

    def cancel(self) -> bool: ...

Outcome = tuple[bool, Any]  # (True, result) or (False, ErrorObject)
Reply = Callable[[bytes | None], None]


class Dispatcher:
    """What every connection of one server shares: the service, the pool, the asyncio loop.

    Args:
        service: the methods.
        scheduler: runs a callback on the engine thread, thread-safely (``Server.call_soon_threadsafe``).
        limits: message limits (size, batch, depth, number length).
        call_timeout: seconds a call may run (0 = no limit).
        max_concurrent_calls: calls running at once per connection.
        handler_threads: size of the sync-handler thread pool.
        threads_per_connection: most pool threads one connection's calls hold at once (default:
            half the pool, at least one).
        start_coroutine: the engine's ``start_coroutine`` (a capability of every engine): coroutines
            run on the engine's own loop when it has one (asyncio, uvloop: no thread hop), else on
            one asyncio loop on a thread of the dispatcher's own.
    """

    def __init__(self, service: Service, scheduler: Callable[[Callable[[], None]], None], *,
                 limits: j.Limits | None = None, call_timeout: float = 30.0, max_concurrent_calls: int = 64,
                 handler_threads: int = 8, threads_per_connection: int | None = None,
                 start_coroutine: Callable[[Coroutine[Any, Any, Any]], asyncio.Future[Any] | None] | None = None
                 ) -> None:
        self.service = service
        self.scheduler = scheduler
        self.limits = limits if limits is not None else j.Limits()
        self.call_timeout = call_timeout
        self.max_concurrent_calls = max_concurrent_calls
        self.pool = HandlerPool(handler_threads, per_owner=threads_per_connection)
        self._lock = threading.Lock()
        self._done: deque[tuple[Session, _Call, Outcome]] = deque()
        self._scheduled = False
        self.start_coroutine = start_coroutine
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self.stats = {"calls": 0, "errors": 0, "internal_errors": 0, "timeouts": 0, "cancelled": 0}

    # ---- running work ----------------------------------------------------------------------------
    def submit(self, session: Session, call: _Call) -> Cancellable | None:
        """Start a call off the engine; returns the coroutine's future (``None`` for a sync call)."""
        spec = call.spec
        if spec.is_async:
            coro = spec.func(*call.args, **call.kwargs)
            # We are on the engine thread: on an engine with a loop the task (and its callback) runs there.
            task = self.start_coroutine(coro) if self.start_coroutine is not None else None
            if task is not None:
                task.add_done_callback(lambda t: self._task_done(session, call, t))
                return task
            fut = asyncio.run_coroutine_threadsafe(coro, self._asyncio_loop())
            fut.add_done_callback(lambda f: self._post(session, call, f))
            return fut
        self.pool.submit(lambda: self._run_sync(session, call), owner=session)
        return None

    def _run_sync(self, session: Session, call: _Call) -> None:
        # On a pool thread. A call that timed out or was cancelled while it waited is skipped.
        if call.done:
            return
        try:
            outcome: Outcome = (True, call.spec.func(*call.args, **call.kwargs))
        except Exception as exc:
            outcome = self.outcome_of(exc)
        self._deliver(session, call, outcome)

    def _task_done(self, session: Session, call: _Call, task: asyncio.Future[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        session.complete(call, self.outcome_of(exc) if exc is not None else (True, task.result()))

    def _post(self, session: Session, call: _Call, fut: Future[Any]) -> None:
        # On the asyncio thread: a coroutine finished.
        if fut.cancelled():
            return
        exc = fut.exception()
        self._deliver(session, call, self.outcome_of(exc) if exc is not None else (True, fut.result()))

    def _deliver(self, session: Session, call: _Call, outcome: Outcome) -> None:
        # Queue the outcome and wake the engine once for everything queued meanwhile.
        with self._lock:
            self._done.append((session, call, outcome))
            wake = not self._scheduled
            self._scheduled = True
        if wake:
            try:
                self.scheduler(self._drain)
            except Exception:  # the engine stopped: nobody is left to answer
                with self._lock:
                    self._done.clear()
                    self._scheduled = False

    def _drain(self) -> None:
        with self._lock:
            items = list(self._done)
            self._done.clear()
            self._scheduled = False
        touched: dict[int, Session] = {}
        for session, call, outcome in items:
            session.complete(call, outcome, progress=False)
            touched[id(session)] = session
        for session in touched.values():  # one progress (one write) per connection per wake-up
            if session.on_progress is not None and not session.closed:
                session.on_progress()

    def outcome_of(self, exc: BaseException) -> Outcome:
        """An exception raised by a handler as the error to answer (never a traceback)."""
        if isinstance(exc, RpcError):
            self.stats["errors"] += 1
            return False, exc.to_error_object()
        self.stats["internal_errors"] += 1
        return False, j.ErrorObject(j.INTERNAL_ERROR, j.MESSAGES[j.INTERNAL_ERROR])

    def _asyncio_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                self._loop_thread = threading.Thread(target=run, name="socklab-rpc-asyncio", daemon=True)
                self._loop_thread.start()
                ready.wait(10)
                self._loop = loop
            return self._loop

    def close(self) -> None:
        """Stop the pool and the asyncio loop (running sync handlers finish in the background)."""
        self.pool.close()
        loop, thread = self._loop, self._loop_thread
        if loop is not None and thread is not None:
            def stop() -> None:
                for task in asyncio.all_tasks(loop):
                    task.cancel()
                loop.stop()
            loop.call_soon_threadsafe(stop)
            thread.join(5)
            loop.close()
            self._loop = None


class HandlerPool:
    """Up to ``max_threads`` threads running sync handlers, started only when needed.

    Unlike a plain executor, it does not start a thread per queued job during a burst: a thread
    that finishes a job takes the next one at once, and a new thread starts only when jobs wait
    and every thread has been on its current job for more than ``spawn_after`` seconds (it is
    blocking). Fewer threads contending for the GIL is what makes pipelined calls fast; the
    watchdog keeps blocking handlers from starving the queue.

    Jobs belong to an ``owner`` (a connection's session). An owner runs at most ``per_owner`` jobs
    at once, and free threads serve owners in turn, so no owner can take the whole pool. Jobs
    submitted without an owner are not capped.
    """

    def __init__(self, max_threads: int, spawn_after: float = 0.002, idle_exit: float = 30.0,
                 per_owner: int | None = None) -> None:
        self.max_threads = max_threads
        self.per_owner = per_owner if per_owner is not None else max(1, max_threads // 2)
        self.spawn_after = spawn_after
        self.idle_exit = idle_exit
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._watch = threading.Condition(self._lock)
        self._queues: dict[object, deque[Callable[[], None]]] = {}  # owner -> its jobs; order = whose turn
        self._running: dict[object, int] = {}  # owner -> its jobs on a thread now
        self._busy_since: dict[int, float] = {}
        self._threads = 0
        self._idle = 0
        self._closed = False
        self._watchdog: threading.Thread | None = None
        self._serial = itertools.count()

    def submit(self, job: Callable[[], None], owner: object = None) -> None:
        """Queue ``job`` for ``owner``. Raises RuntimeError once closed."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the handler pool is closed")
            self._queues.setdefault(owner, deque()).append(job)
            runnable = self._runnable()
            if not runnable:
                return  # its owner already holds its share: the job waits for one of them to end
            if self._idle >= runnable:  # enough sleeping threads for every runnable job
                self._work.notify()
            elif self._threads == 0 or self._all_blocked():
                self._spawn()
            elif self._threads < self.max_threads:
                if self._watchdog is None:
                    self._watchdog = threading.Thread(target=self._watch_loop, name="socklab-rpc-watchdog",
                                                      daemon=True)
                    self._watchdog.start()
                self._watch.notify()

    def _cap(self, owner: object) -> int:
        return self.max_threads if owner is None else self.per_owner  # jobs of no owner share nothing

    def _runnable(self) -> int:
        """Queued jobs whose owner is below its share (what a free thread could take now)."""
        return sum(max(0, min(len(q), self._cap(o) - self._running.get(o, 0))) for o, q in self._queues.items())

    def _take(self) -> tuple[object, Callable[[], None]] | None:
        """The next job in turn from an owner below its share; that owner goes to the back of the line."""
        for owner, queue in self._queues.items():
            if self._running.get(owner, 0) < self._cap(owner):
                job = queue.popleft()
                del self._queues[owner]
                if queue:
                    self._queues[owner] = queue
                self._running[owner] = self._running.get(owner, 0) + 1
                return owner, job
        return None

    def _all_blocked(self) -> bool:
        # every thread is on a job (none starting or between jobs) and has been for a while
        if self._threads >= self.max_threads or len(self._busy_since) < self._threads:
            return False
        limit = time.monotonic() - self.spawn_after
        return all(t < limit for t in self._busy_since.values())

    def _spawn(self) -> None:
        self._threads += 1
        threading.Thread(target=self._worker, name=f"socklab-rpc-{next(self._serial)}", daemon=True).start()

    def _worker(self) -> None:
        me = threading.get_ident()
        while True:
            with self._lock:
                while (taken := self._take()) is None:
                    if self._closed:
                        self._threads -= 1
                        return
                    self._idle += 1
                    woken = self._work.wait(self.idle_exit)
                    self._idle -= 1
                    if not woken and not self._runnable():
                        self._threads -= 1  # idle for long: let the thread go
                        return
                owner, job = taken
                self._busy_since[me] = time.monotonic()
            try:
                job()
            finally:
                with self._lock:
                    self._busy_since.pop(me, None)
                    left = self._running[owner] - 1
                    if left:
                        self._running[owner] = left
                    else:
                        del self._running[owner]
                    if owner in self._queues and self._idle:  # its next job is runnable again
                        self._work.notify()

    def _watch_loop(self) -> None:
        # Sleeps while nothing waits; while jobs wait behind busy threads, looks every spawn_after.
        with self._lock:
            while not self._closed:
                if self._runnable() > self._idle and self._threads < self.max_threads:
                    self._watch.wait(self.spawn_after)
                    if self._runnable() > self._idle and self._all_blocked():
                        self._spawn()
                else:
                    self._watch.wait()

    def close(self) -> None:
        """Drop queued jobs and let the threads end (a running job finishes in the background)."""
        with self._lock:
            self._closed = True
            self._queues.clear()
            self._work.notify_all()
            self._watch.notify_all()


class _Call:
    __slots__ = ("args", "done", "future", "group", "kwargs", "request", "slot", "spec", "started", "timer")

    def __init__(self, request: j.Request, spec: MethodSpec, args: tuple[Any, ...], kwargs: dict[str, Any],
                 group: _Group, slot: int) -> None:
        self.request = request
        self.spec = spec
        self.args = args
        self.kwargs = kwargs
        self.group = group
        self.slot = slot
        self.started = False
        self.done = False
        self.future: Cancellable | None = None
        self.timer: TimerHandle | None = None


class _Group:
    """The calls of one incoming message and where their answer goes."""

    __slots__ = ("collector", "reply", "sent")

    def __init__(self, collector: j.ReplyCollector, reply: Reply) -> None:
        self.collector = collector
        self.reply = reply
        self.sent = False

    def add(self, slot: int, answer: j.Response | j.ErrorResponse | None) -> None:
        self.collector.add(slot, answer)
        self.flush()

    def flush(self) -> None:
        if self.collector.done and not self.sent:
            self.sent = True
            self.reply(self.collector.payload())


class Session:
    """One connection's calls (or one HTTP client's): runs on the engine thread only.

    Args:
        dispatcher: the server's shared dispatcher.
        call_later: the transport's timer (for ``call_timeout``).
        on_progress: called after calls complete (the adapter resumes reading, or closes at EOF).
    """

    def __init__(self, dispatcher: Dispatcher, call_later: Callable[[float, Callable[[], None]], TimerHandle],
                 on_progress: Callable[[], None] | None = None) -> None:
        self.d = dispatcher
        self.call_later = call_later
        self.on_progress = on_progress
        self.running = 0
        self.waiting: deque[_Call] = deque()
        self.inflight: dict[tuple[str, Any], _Call] = {}
        self.closed = False

    @property
    def saturated(self) -> bool:
        """Calls are waiting for a free slot: stop reading this peer."""
        return bool(self.waiting)

    @property
    def idle(self) -> bool:
        """Nothing running or waiting."""
        return self.running == 0 and not self.waiting

    def handle(self, payload: bytes, reply: Reply) -> None:
        """Parse one incoming message and start its calls; ``reply`` gets the answer (or ``None``)."""
        incoming = j.parse_incoming(payload, self.d.limits)
        group = _Group(j.ReplyCollector(incoming), reply)
        for slot, item in enumerate(incoming.items):
            if isinstance(item, j.Request):
                self._accept(item, group, slot)
        group.flush()

    def _accept(self, req: j.Request, group: _Group, slot: int) -> None:
        d = self.d
        d.stats["calls"] += 1
        if req.method == CANCEL_METHOD:
            self._cancel(req.params)
            group.collector.add(slot, None if req.is_notification else j.Response(req.id, None))
            return
        spec = d.service.lookup(req.method)
        answer: j.Response | j.ErrorResponse
        if spec is None:
            answer = j.error_response(req.id, j.METHOD_NOT_FOUND, data=f"no method {req.method[:100]!r}")
        elif spec.name == "rpc.discover":
            answer = j.Response(req.id, d.service.describe())
        else:
            try:
                args, kwargs = j.bind_params(spec.signature, req.params)
            except RemoteProtocolError as exc:
                answer = j.error_response(req.id, j.INVALID_PARAMS, data=str(exc))
            else:
                call = _Call(req, spec, args, kwargs, group, slot)
                if spec.inline:
                    self._run_inline(call)
                    return
                if not req.is_notification:
                    self.inflight[j.id_key(req.id)] = call
                if self.running < d.max_concurrent_calls:
                    self._start(call)
                else:
                    self.waiting.append(call)
                return
        group.collector.add(slot, None if req.is_notification else answer)

    def _run_inline(self, call: _Call) -> None:
        try:
            outcome: Outcome = (True, call.spec.func(*call.args, **call.kwargs))
        except Exception as exc:
            outcome = self.d.outcome_of(exc)
        call.group.collector.add(call.slot, None if call.request.is_notification else _answer(call, outcome))

    def _start(self, call: _Call) -> None:
        call.started = True
        self.running += 1
        if self.d.call_timeout > 0:
            call.timer = self.call_later(self.d.call_timeout, lambda: self._expire(call))
        try:
            call.future = self.d.submit(self, call)
        except RuntimeError:  # the pool was shut down: the server is stopping
            self.complete(call, (False, j.ErrorObject(j.INTERNAL_ERROR, "server is shutting down")))

    def _expire(self, call: _Call) -> None:
        if call.done:
            return
        self.d.stats["timeouts"] += 1
        if call.future is not None:
            call.future.cancel()
        self.complete(call, (False, j.ErrorObject(
            j.REQUEST_TIMEOUT, j.MESSAGES[j.REQUEST_TIMEOUT], f"no result within {self.d.call_timeout:g} s "
                                                              "(call_timeout)")))

    def _cancel(self, params: Any) -> None:
        # LSP's shape {"id": X}; a one-element array [X] is accepted too. Unknown ids: ignored.
        if isinstance(params, dict) and "id" in params:
            target = params["id"]
        elif isinstance(params, list) and len(params) == 1:
            target = params[0]
        else:
            return
        if not j._valid_id(target):
            return
        call = self.inflight.get(j.id_key(target))
        if call is None or call.done:
            return
        self.d.stats["cancelled"] += 1
        if call.future is not None:
            call.future.cancel()
        self.complete(call, (False, j.ErrorObject(j.REQUEST_CANCELLED, j.MESSAGES[j.REQUEST_CANCELLED])))

    def complete(self, call: _Call, outcome: Outcome, progress: bool = True) -> None:
        """A call finished (result, error, timeout or cancel); only the first completion counts.

        ``progress=False``: the caller will call ``on_progress`` itself after a run of completions.
        """
        if call.done or self.closed:
            return
        call.done = True
        if call.started:
            self.running -= 1
        if call.timer is not None:
            call.timer.cancel()
        if not call.request.is_notification:
            key = j.id_key(call.request.id)
            if self.inflight.get(key) is call:
                del self.inflight[key]
        call.group.add(call.slot, None if call.request.is_notification else _answer(call, outcome))
        while self.waiting and self.running < self.d.max_concurrent_calls:
            nxt = self.waiting.popleft()
            if not nxt.done:
                self._start(nxt)
        if progress and self.on_progress is not None:
            self.on_progress()

    def close(self) -> None:
        """The connection is gone: cancel what runs, forget what waits."""
        self.closed = True
        for call in list(self.inflight.values()) + list(self.waiting):
            call.done = True
            if call.timer is not None:
                call.timer.cancel()
            if call.future is not None:
                call.future.cancel()
        self.inflight.clear()
        self.waiting.clear()


def _answer(call: _Call, outcome: Outcome) -> j.Response | j.ErrorResponse:
    ok, value = outcome
    if ok:
        return j.Response(call.request.id, value)
    return j.ErrorResponse(call.request.id, value)
