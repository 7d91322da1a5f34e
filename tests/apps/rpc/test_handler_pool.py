"""HandlerPool: threads start lazily, blocking jobs do not starve the queue, the bound holds."""

from __future__ import annotations

import threading

import pytest

from socklab.apps.rpc.dispatch import HandlerPool


def test_blocked_threads_do_not_starve_the_queue_and_the_bound_holds() -> None:
    pool = HandlerPool(3)
    release = threading.Event()
    started = threading.Semaphore(0)
    done = threading.Semaphore(0)
    active = 0
    peak = 0
    lock = threading.Lock()

    def blocker() -> None:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        started.release()
        release.wait(20)
        with lock:
            active -= 1
        done.release()

    try:
        for _ in range(5):
            pool.submit(blocker)
        for _ in range(3):  # three run at once although each blocks (the watchdog adds threads)
            assert started.acquire(timeout=10)
        assert not started.acquire(timeout=0.05)  # ...and no more than three
        release.set()
        for _ in range(5):
            assert done.acquire(timeout=10)
        assert peak == 3
    finally:
        release.set()
        pool.close()


def test_many_quick_jobs_and_close() -> None:
    pool = HandlerPool(8)
    done = threading.Semaphore(0)
    for _ in range(1000):
        pool.submit(done.release)
    for _ in range(1000):
        assert done.acquire(timeout=10)
    pool.close()
    with pytest.raises(RuntimeError):
        pool.submit(done.release)


def test_an_owner_holds_at_most_its_share_and_owners_take_turns() -> None:
    pool = HandlerPool(4, per_owner=2)
    release = threading.Event()
    started: list[str] = []
    lock = threading.Lock()
    both = threading.Semaphore(0)

    def job(owner: str) -> None:
        with lock:
            started.append(owner)
        both.release()
        release.wait(20)

    try:
        for _ in range(6):
            pool.submit(lambda: job("hog"), owner="hog")
        pool.submit(lambda: job("other"), owner="other")
        for _ in range(3):  # two of the hog's and the other's start; the hog's four others wait
            assert both.acquire(timeout=10)
        with lock:
            assert sorted(started) == ["hog", "hog", "other"]
    finally:
        release.set()
        pool.close()
