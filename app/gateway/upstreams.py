"""Where each model goes: the default upstream (UPSTREAM_BASE_URL) and, optionally, a TOML file
of named upstreams and per-model routes (TOLLGATE_UPSTREAMS_FILE):

    default = "camocopy"                      # optional; else UPSTREAM_BASE_URL

    [upstreams.camocopy]
    base_url = "https://api-v1.camocopy.com/v1"
    api_key_env = "CAMOCOPY_API_KEY"          # or api_key = "…"

    [routes]
    "llama-3.3-70b" = { upstream = "camocopy", model = "llama-3-3-70b" }
    "pixtral-12b-2409" = "camocopy"

Routes are matched on the catalog name (suffix included first, then the base model); a route's
`model` replaces the model name sent upstream, keeping any `-online`/`-deep` suffix.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from app.config import Settings


class UpstreamConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Upstream:
    name: str
    base_url: str  # ends in /v1, no trailing slash
    api_key: str | None


@dataclass(frozen=True, slots=True)
class Route:
    upstream: Upstream
    model: str | None  # the upstream's name for the model; None → as the client sent it


@dataclass(frozen=True, slots=True)
class Router:
    default: Upstream | None
    routes: dict[str, Route]

    def route(
        self, name: str, base: str, suffix: str | None, requested: str
    ) -> tuple[Upstream, str]:
        """(upstream, model name to send) for a request of catalog model `name`."""
        route = self.routes.get(name)
        if route is None and (route := self.routes.get(base)) is not None and route.model:
            route = Route(route.upstream, f"{route.model}{suffix or ''}")
        if route is not None:
            return route.upstream, route.model or requested
        if self.default is None:
            raise UpstreamConfigError(f"no upstream serves {name}")
        return self.default, requested


def load_router(settings: Settings) -> Router:
    default = None
    if settings.upstream_base_url:
        default = Upstream(
            "default", settings.upstream_base_url.rstrip("/"), settings.upstream_api_key
        )
    if settings.upstreams_file is None:
        return Router(default=default, routes={})
    path = settings.upstreams_file
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UpstreamConfigError(f"{path}: {exc}") from exc
    upstreams = {
        name: _upstream(path, name, spec) for name, spec in raw.get("upstreams", {}).items()
    }

    def named(key: str, name: object) -> Upstream:
        if not isinstance(name, str) or name not in upstreams:
            raise UpstreamConfigError(f"{path}: {key}: unknown upstream {name!r}")
        return upstreams[name]

    if "default" in raw:
        default = named("default", raw["default"])
    routes: dict[str, Route] = {}
    for model, spec in raw.get("routes", {}).items():
        key = f"routes.{model}"
        if isinstance(spec, str):
            routes[model.lower()] = Route(named(key, spec), None)
        elif isinstance(spec, dict):
            routes[model.lower()] = Route(
                named(f"{key}.upstream", spec.get("upstream")), spec.get("model")
            )
        else:
            raise UpstreamConfigError(f"{path}: {key}: expected an upstream name or a table")
    return Router(default=default, routes=routes)


def _upstream(path: Path, name: str, spec: object) -> Upstream:
    key = f"upstreams.{name}"
    if not isinstance(spec, dict) or not isinstance(spec.get("base_url"), str):
        raise UpstreamConfigError(f"{path}: {key}.base_url: required")
    api_key = spec.get("api_key")
    if api_key is None and isinstance(spec.get("api_key_env"), str):
        api_key = os.environ.get(spec["api_key_env"])
    return Upstream(name, spec["base_url"].rstrip("/"), api_key)
