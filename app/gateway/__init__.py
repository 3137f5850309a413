"""The OpenAI-compatible front door: proxy routes, upstream client, stream relay, usage capture."""
