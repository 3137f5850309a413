"""Tollgate: an OpenAI-compatible LLM gateway that meters and bills every request."""
