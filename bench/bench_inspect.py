"""What inspecting a request costs (parse + the hold's prompt count), one core, no I/O.

    python bench/bench_inspect.py

Run it from two checkouts (e.g. a `git worktree` of the commit before) to compare: the common
request must not pay for the parts only tool-heavy requests have.
"""

from __future__ import annotations

import sys
import timeit
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.gateway import requests as rq

COMMON = {
    "model": "llama-3.1-8b",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Say this is a test!"},
    ],
}
TOOL = {
    "type": "function",
    "function": {
        "name": "lookup_order",
        "description": "Looks up an order by its number and returns its state.",
        "parameters": {"type": "object", "properties": {"order": {"type": "string"}}},
    },
}
TOOLS = {**COMMON, "tools": [TOOL] * 20, "tool_choice": "auto"}


def per_call_us(body: dict[str, object], number: int) -> float:
    raw = msgspec.json.encode(body)

    def inspect() -> None:
        rq.inspect_json(rq.CHAT, rq.parse_json_body(raw), 4096)

    inspect()
    return min(timeit.repeat(inspect, number=number, repeat=5)) / number * 1e6


if __name__ == "__main__":
    print(f"common 2-message chat: {per_call_us(COMMON, 50_000):7.2f} µs")
    print(f"with 20 tools:         {per_call_us(TOOLS, 2_000):7.2f} µs")
