"""Each engine's own thread: it loads, warms up, runs and closes the engine, for the engine's whole life.

Why: torch's CPU kernels run OpenMP parallel regions, and every thread that enters one gets its
own team of OpenMP threads. A model loaded in one thread and then run from whichever thread the
event loop's pool hands out keeps several teams competing for the same cores (measured ~30 %
slower on two cores). One thread per engine keeps one team per engine, as in a plain script.

The event loop still waits through ``trio.to_thread.run_sync``: the pool thread it lends hands the
call to the engine's thread (``EngineThread.call``) and blocks until it returns, so the caller's
limiter, cancellation and ``abandon_on_cancel`` keep their meaning unchanged.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from typing import Final, TypeVar

log = logging.getLogger("indextts_server")

T = TypeVar("T")
E = TypeVar("E")

_Work = tuple[Future[object], Callable[..., object], tuple[object, ...]]


class EngineThread:
    """One long-lived daemon thread that runs, one at a time and in order, the calls given to it.

    Daemon, so a call stuck inside a model never keeps the process from exiting (the drain has
    already failed such a task by then).
    """

    def __init__(self, name: str):
        self.name = name
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self.busy = False  # inside a call (read without a lock: a hint for the shutdown)
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def call(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` on this thread; blocks the calling thread until it returns or raises."""
        if threading.current_thread() is self._thread:  # already here (a nested call)
            return fn(*args)
        return self.post(fn, *args).result()

    def post(self, fn: Callable[..., T], *args: object) -> Future[T]:
        """Queue ``fn(*args)`` for this thread; the future holds its result or exception."""
        if not self._thread.is_alive():
            raise RuntimeError(f"engine thread {self.name} has stopped")
        future: Future[T] = Future()
        self._work.put((future, fn, args))  # type: ignore[arg-type]  # Future is invariant
        return future

    def stop(self) -> None:
        """Let the thread end once the calls already given to it are done (does not wait)."""
        self._work.put(None)

    def join(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds for the thread to end; True if it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _serve(self) -> None:
        while True:
            work = self._work.get()
            if work is None:
                return
            future, fn, args = work
            del work
            if future.set_running_or_notify_cancel():
                self.busy = True
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:  # handed to the caller, which re-raises it
                    future.set_exception(exc)
                finally:
                    self.busy = False
            del future, fn, args  # hold nothing of the engine between calls


_HOMES: Final[weakref.WeakKeyDictionary[object, EngineThread]] = weakref.WeakKeyDictionary()
_HOMES_LOCK: Final = threading.Lock()
_NUMBERS: Final = itertools.count(1)


def _adopt(engine: object, thread: EngineThread) -> None:
    """Record ``thread`` as ``engine``'s home (the caller holds ``_HOMES_LOCK``)."""
    _HOMES[engine] = thread
    weakref.finalize(engine, thread.stop)  # a collected engine frees its thread


def start_engine(factory: Callable[[], E], name: str) -> E:
    """Build an engine on a new thread of its own and keep that thread as the engine's home.

    ``factory`` runs on the new thread (so the model loads there); if it raises, the thread ends
    and the exception reaches the caller. Engine-agnostic: any engine class can be built this way.
    """
    thread = EngineThread(name)
    try:
        engine = thread.call(factory)
    except BaseException:
        thread.stop()
        raise
    with _HOMES_LOCK:
        _adopt(engine, thread)
    return engine


def home_thread(engine: object) -> EngineThread:
    """The thread that makes every call into ``engine``: the one it was built on by `start_engine`,
    else a new one made now and kept for it (an engine built elsewhere, as in tests)."""
    with _HOMES_LOCK:
        thread = _HOMES.get(engine)
        if thread is not None:
            return thread
        thread = EngineThread(f"engine-{next(_NUMBERS)}")
        _adopt(engine, thread)
    return thread


def close_engine(engine: object, timeout: float = 5.0) -> None:
    """At shutdown: the engine's ``close()`` (if it has one) on its own thread, then end that thread.

    Waits at most ``timeout`` seconds, and not at all when a call the drain abandoned is still
    inside the model: that thread is left behind (a daemon; the process exits anyway), with a
    warning, so the exit never waits on a stuck engine.
    """
    thread = home_thread(engine)
    close: Callable[[], object] = getattr(engine, "close", lambda: None)
    stuck = thread.busy
    closed = thread.post(close)
    thread.stop()
    try:
        closed.result(0 if stuck else timeout)
    except TimeoutError:
        log.warning("engine thread %s did not end within %gs; leaving it", thread.name, timeout)
        return
    except Exception:
        log.exception("closing the engine on %s failed", thread.name)
    thread.join(timeout)
