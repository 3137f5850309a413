"""The limiter's own counts (`Windows`) keep the semantics of `limits`' storages, which count
in Redis: the same counts and window expiries for any sequence of increments (negative ones,
the corrections, included), reads and passing time."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from limits.aio.storage import MemoryStorage, memory

from app.limits import service
from app.limits.service import WINDOW_SECONDS, Windows

KEYS = ("tollgate:rpm:a", "tollgate:tpm:a", "tollgate:rpm:b")

step = st.one_of(
    # Small amounts, so counts often come back to zero (where a window restarts).
    st.tuples(st.just("incr"), st.sampled_from(KEYS), st.integers(-3, 3)),
    st.tuples(st.just("get"), st.sampled_from(KEYS), st.just(0)),
    st.tuples(st.just("wait"), st.just(""), st.sampled_from((1, 30, 59, 60, 61))),  # seconds
)


@settings(max_examples=300, deadline=None)
@given(st.lists(step, max_size=60))
def test_windows_count_as_limits_memory_storage(steps: list[tuple[str, str, int]]) -> None:
    clock = [1_000_000.0]
    stopped = SimpleNamespace(time=lambda: clock[0])
    with pytest.MonkeyPatch.context() as patch:  # the two stores' clocks, not the process's
        patch.setattr(service, "time", stopped)
        patch.setattr(memory, "time", stopped)
        asyncio.run(_compare(steps, clock))


async def _compare(steps: list[tuple[str, str, int]], clock: list[float]) -> None:
    ours, theirs = Windows(), MemoryStorage()
    for action, key, value in steps:
        if action == "wait":
            clock[0] += value
            continue
        if action == "incr":
            got = await ours.incr(key, WINDOW_SECONDS, value)
            assert got == await theirs.incr(key, WINDOW_SECONDS, value)
        else:
            assert await ours.get(key) == await theirs.get(key)
        for each in KEYS:
            assert await ours.get(each) == await theirs.get(each)
            if await ours.get(each):
                assert await ours.get_expiry(each) == await theirs.get_expiry(each)
