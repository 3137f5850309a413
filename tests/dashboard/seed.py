"""Realistic usage for dashboard tests and screenshots: a month of requests across models,
ingested through the admin API (`POST /admin/events`), so it is priced and deducted like any
other usage."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

# (model, prompt tokens, completion tokens, images, web searches) of a typical request.
PROFILES = (
    ("llama-3.3-70b", 1_800, 650, 0, 0),
    ("llama-3.1-8b", 900, 300, 0, 0),
    ("deepseek-r1-70b", 2_400, 1_900, 0, 0),
    ("llama-3.3-70b-online", 600, 500, 0, 1),
    ("pixtral-12b-2409", 1_100, 250, 2, 0),
)


def usage_events(
    account_id: str, now: datetime, *, days: int = 30, seed: int = 7
) -> list[dict[str, Any]]:
    """Weekday-heavy traffic growing over `days` days up to `now`, a few idle days included."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    for back in range(days - 1, -1, -1):
        day = (now - timedelta(days=back)).replace(hour=0, minute=0, second=0, microsecond=0)
        if rng.random() < 0.12 and back not in (0, 1):
            continue  # an idle day: a zero-height bar
        weekend = day.weekday() >= 5
        requests = int((10 if weekend else 36) * (1 + (days - back) / days) * rng.uniform(0.6, 1.4))
        for n in range(requests):
            model, prompt, completion, images, searches = rng.choices(
                PROFILES, weights=(6, 5, 2, 2, 1)
            )[0]
            when = day + timedelta(minutes=rng.randrange(8 * 60, 20 * 60), seconds=n)
            if when >= now:
                when = now - timedelta(seconds=n + 1)
            events.append(
                {
                    "id": f"seed-{account_id}-{back}-{n}",
                    "account_id": account_id,
                    "time": when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "model": model,
                    "endpoint": "/v1/chat/completions",
                    "prompt_tokens": int(prompt * rng.uniform(0.3, 2.5)),
                    "completion_tokens": int(completion * rng.uniform(0.3, 2.5)),
                    "images": images,
                    "search_requests": searches,
                }
            )
    return events


async def ingest(admin: httpx.AsyncClient, events: list[dict[str, Any]]) -> None:
    for start in range(0, len(events), 500):
        response = await admin.post("/admin/events", json={"events": events[start : start + 500]})
        assert response.status_code == 200, response.text
