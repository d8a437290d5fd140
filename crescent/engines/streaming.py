"""Continuous generation: a window of requests kept in flight, results taken in submission order.

A stage hands `generate_in_order` two functions: `next_request(i)` builds request `i` (or says
there is nothing to send yet, or any more), and `take(i, generation)` consumes the results in
the order the requests were made, however the engine finished them. As soon as a
request finishes the window is topped up, so the engine never waits for a batch's slowest
completion, and what a stage decides stays a pure function of its seed.

Engines that can stream (offline vLLM, its Ray replicas, OpenAI-compatible servers) give a
`session(sampling, n)`; any other (hf, a test's scripted engine) is driven by `BatchSession`:
what was submitted goes to its `chat`/`complete` as one call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from crescent.config import SamplingConfig
from crescent.engines.base import Engine, Generation, Request, derive_seed


class Session(Protocol):
    in_flight: int

    def submit(self, index: int, request: Request) -> None: ...

    def poll(self) -> dict[int, Generation]:
        """Wait until at least one submitted request is finished; those finished, by index."""

    def close(self) -> None:
        """Drop what is still in flight; the session is over."""


def generate_in_order(engine: Engine, sampling: SamplingConfig, n: int, window: int,
                      next_request: Callable[[int], Request | None],
                      take: Callable[[int, Generation], bool]) -> None:
    """Keep up to `window` requests in flight; hand each finished one to `take` in request
    order. `next_request(i)` returns request i, or None while there is nothing to send (until
    more results were taken) or nothing left; `take` returns False to stop, and what is still
    in flight is dropped."""
    session = open_session(engine, sampling, n)
    finished: dict[int, Generation] = {}
    submitted = taken = 0
    try:
        while True:
            while session.in_flight < window:
                request = next_request(submitted)
                if request is None:
                    break
                session.submit(submitted, request)
                submitted += 1
            if taken == submitted:
                return  # nothing in flight, nothing more to send
            finished.update(session.poll())
            while taken in finished:
                if not take(taken, finished.pop(taken)):
                    return
                taken += 1
    finally:
        session.close()


def open_session(engine: Engine, sampling: SamplingConfig, n: int) -> Session:
    session = getattr(engine, "session", None)
    return session(sampling, n) if session is not None else BatchSession(engine, sampling, n)


class BatchSession:
    """For engines without a request stream: everything submitted since the last poll goes to
    one `chat` call (and one `complete` call for raw prompts), seeded by its first request."""

    def __init__(self, engine: Engine, sampling: SamplingConfig, n: int):
        self.engine, self.sampling, self.n = engine, sampling, n
        self.waiting: list[tuple[int, Request]] = []

    @property
    def in_flight(self) -> int:
        return len(self.waiting)

    def submit(self, index: int, request: Request) -> None:
        self.waiting.append((index, request))

    def poll(self) -> dict[int, Generation]:
        waiting, self.waiting = self.waiting, []
        finished = {}
        for raw, method in ((False, "chat"), (True, "complete")):
            group = [(i, r) for i, r in waiting if isinstance(r.input, str) == raw]
            if group:
                generations = getattr(self.engine, method)(
                    [r.input for _, r in group], self.sampling, n=self.n, seed=group[0][1].seed)
                finished.update(zip((i for i, _ in group), generations))
        return finished

    def close(self) -> None:
        self.waiting = []


def through_session(engine, inputs, sampling, n, seed) -> list[Generation]:
    """`chat`/`complete` of an engine whose requests go through its session: all of them in
    flight at once, input i seeded `derive_seed(seed, i)` as a single offline engine seeds it,
    the results in input order."""
    results = []
    generate_in_order(engine, sampling, n, len(inputs),
                      lambda i: Request(inputs[i], derive_seed(seed, i)) if i < len(inputs)
                      else None, lambda i, generation: results.append(generation) or True)
    return results
