"""Where each model goes: the default upstream (UPSTREAM_BASE_URL) and, optionally, a TOML file
of named upstreams and per-model routes (TOLLGATE_UPSTREAMS_FILE):

    default = "camocopy"                      # optional; else UPSTREAM_BASE_URL

    default_costs = "costs/default"           # optional: cost tables of UPSTREAM_BASE_URL

    [upstreams.camocopy]
    base_url = "https://api-v1.camocopy.com/v1"
    api_key_env = "CAMOCOPY_API_KEY"          # or api_key = "…"
    costs = "costs/camocopy"                  # optional: what the operator pays it

    [routes]
    "llama-3.3-70b" = { upstream = "camocopy", model = "llama-3-3-70b" }
    "pixtral-12b-2409" = "camocopy"
    "llama-3.1-8b" = ["camocopy", { upstream = "backup", model = "llama-3-1-8b" }]

    [breaker]                                 # optional; these are the defaults
    window = 10                               # the recent attempts judged
    min_attempts = 5                          # fewer than this never open the circuit
    cooldown_seconds = 30

Routes are matched on the catalog name (suffix included first, then the base model); a route's
`model` replaces the model name sent upstream, keeping any `-online`/`-deep` suffix. A list
(also for `default`) is a fallback order (SPEC 13): the next entry is tried when one fails
before its response started.

An upstream's `costs` (and `default_costs`, for UPSTREAM_BASE_URL's `default`) names a folder,
relative to this file, of rate tables in exactly the format of `pricing/` and in the catalog's
currency: what the operator pays that upstream (SPEC 13). Each usage event it serves stores its
`upstream_cost`, priced with the version in force at the request's arrival under the catalog's
model name (suffix included: a suffixed model needs that suffix in the cost table too); an
upstream without tables, or a model or usage its tables do not price, leaves it unknown (NULL).
"""

from __future__ import annotations

import os
import time
import tomllib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from app.config import Settings
from app.errors import InvalidRequest, ModelNotFound
from app.pricing import Catalog, PricingConfigError, Usage, load_catalog, price


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
class Attempt:
    """One entry of a request's fallback order: where to send it and under which name."""

    upstream: Upstream
    model: str


@dataclass(frozen=True, slots=True)
class Router:
    default: tuple[Route, ...]
    routes: dict[str, tuple[Route, ...]]

    def route(self, name: str, base: str, suffix: str | None, requested: str) -> list[Attempt]:
        """The upstreams to try, in order, for a request of catalog model `name`."""
        routes = self.routes.get(name)
        if routes is None and (routes := self.routes.get(base)) is not None:
            # A base model's route serves its suffixed variants, the suffix kept.
            routes = tuple(
                Route(r.upstream, f"{r.model}{suffix or ''}") if r.model else r for r in routes
            )
        routes = routes or self.default
        if not routes:
            raise UpstreamConfigError(f"no upstream serves {name}")
        return [Attempt(r.upstream, r.model or requested) for r in routes]

    @property
    def upstreams(self) -> list[str]:
        """Every upstream name a request can reach (bounded: metric labels come from here)."""
        names = {r.upstream.name for r in self.default}
        names.update(r.upstream.name for routes in self.routes.values() for r in routes)
        return sorted(names)


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    window: int = 10
    min_attempts: int = 5
    cooldown_seconds: float = 30.0


@dataclass(slots=True)
class _Circuit:
    recent: deque[bool]  # True = failed, newest last
    opened_at: float | None = None  # monotonic; None = closed
    probing: bool = False  # the one request let through after the cool-down is out


@dataclass
class CircuitBreaker:
    """Per-process health of each upstream (SPEC 13): one that failed most of its recent
    attempts is skipped for a cool-down, then given a single probe request; the probe's result
    closes the circuit or opens it again. State per process is enough: each instance learns
    about a dead upstream from its own few failures."""

    policy: BreakerPolicy = field(default_factory=BreakerPolicy)
    clock: Any = time.monotonic
    _circuits: dict[str, _Circuit] = field(default_factory=dict)

    def _circuit(self, name: str) -> _Circuit:
        circuit = self._circuits.get(name)
        if circuit is None:
            circuit = self._circuits[name] = _Circuit(deque(maxlen=self.policy.window))
        return circuit

    def order(self, attempts: list[Attempt]) -> list[Attempt]:
        """`attempts` without the upstreams whose circuit is open. When that leaves none, the
        first is tried anyway: a request is never refused without reaching any upstream."""
        if not self._circuits:
            return attempts  # nothing has failed yet: the common case costs one check
        allowed = [a for a in attempts if self._admits(a.upstream.name)]
        return allowed or attempts[:1]

    def _admits(self, name: str) -> bool:
        circuit = self._circuits.get(name)
        if circuit is None or circuit.opened_at is None:
            return True
        if circuit.probing or self.clock() - circuit.opened_at < self.policy.cooldown_seconds:
            return False
        circuit.probing = True  # half-open: this request is the probe
        return True

    def is_open(self, name: str) -> bool:
        circuit = self._circuits.get(name)
        return circuit is not None and circuit.opened_at is not None

    def succeeded(self, name: str) -> None:
        circuit = self._circuits.get(name)
        if circuit is None:
            return
        if circuit.opened_at is not None:  # the probe answered: close, forget the failures
            circuit.opened_at = None
            circuit.probing = False
            circuit.recent.clear()
        circuit.recent.append(False)

    def failed(self, name: str) -> None:
        circuit = self._circuit(name)
        if circuit.opened_at is not None:  # the probe failed (or a request begun before)
            circuit.opened_at = self.clock()
            circuit.probing = False
            return
        circuit.recent.append(True)
        failures = sum(circuit.recent)
        if len(circuit.recent) >= self.policy.min_attempts and failures * 2 > len(circuit.recent):
            circuit.opened_at = self.clock()


def load_routing(settings: Settings) -> tuple[Router, BreakerPolicy]:
    default: tuple[Route, ...] = ()
    if settings.upstream_base_url:
        upstream = Upstream(
            "default", settings.upstream_base_url.rstrip("/"), settings.upstream_api_key
        )
        default = (Route(upstream, None),)
    if settings.upstreams_file is None:
        return Router(default=default, routes={}), BreakerPolicy()
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

    def entry(key: str, spec: object) -> Route:
        if isinstance(spec, str):
            return Route(named(key, spec), None)
        if isinstance(spec, dict):
            model = spec.get("model")
            if model is not None and not isinstance(model, str):
                raise UpstreamConfigError(f"{path}: {key}.model: expected a string")
            return Route(named(f"{key}.upstream", spec.get("upstream")), model)
        raise UpstreamConfigError(f"{path}: {key}: expected an upstream name or a table")

    def entries(key: str, spec: object) -> tuple[Route, ...]:
        if not isinstance(spec, list):
            return (entry(key, spec),)
        if not spec:
            raise UpstreamConfigError(f"{path}: {key}: an empty list")
        routes = tuple(entry(f"{key}[{i}]", item) for i, item in enumerate(spec))
        names = [r.upstream.name for r in routes]
        if len(set(names)) != len(names):
            # Each upstream is tried at most once per request (SPEC 13).
            raise UpstreamConfigError(f"{path}: {key}: an upstream is listed twice")
        return routes

    if "default" in raw:
        default = entries("default", raw["default"])
    routes = {
        model.lower(): entries(f"routes.{model}", spec)
        for model, spec in raw.get("routes", {}).items()
    }
    return Router(default=default, routes=routes), _breaker_policy(path, raw.get("breaker", {}))


def _breaker_policy(path: Path, spec: object) -> BreakerPolicy:
    if not isinstance(spec, dict):
        raise UpstreamConfigError(f"{path}: breaker: expected a table")
    policy = BreakerPolicy()
    values: dict[str, Any] = {}
    for key, kind in (("window", int), ("min_attempts", int), ("cooldown_seconds", float)):
        if key in spec:
            value = spec[key]
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise UpstreamConfigError(f"{path}: breaker.{key}: expected a positive number")
            values[key] = kind(value)
    unknown = set(spec) - {"window", "min_attempts", "cooldown_seconds"}
    if unknown:
        raise UpstreamConfigError(f"{path}: breaker: unknown keys {sorted(unknown)}")
    policy = replace(policy, **values)
    if policy.min_attempts > policy.window:
        raise UpstreamConfigError(f"{path}: breaker.min_attempts: more than the window")
    return policy


def _upstream(path: Path, name: str, spec: object) -> Upstream:
    key = f"upstreams.{name}"
    if not isinstance(spec, dict) or not isinstance(spec.get("base_url"), str):
        raise UpstreamConfigError(f"{path}: {key}.base_url: required")
    api_key = spec.get("api_key")
    if api_key is None and isinstance(spec.get("api_key_env"), str):
        api_key = os.environ.get(spec["api_key_env"])
    return Upstream(name, spec["base_url"].rstrip("/"), api_key)


@dataclass(frozen=True, slots=True)
class UpstreamCosts:
    """What the operator pays each upstream: its name → its cost tables (a `Catalog`)."""

    tables: Mapping[str, Catalog] = field(default_factory=dict)

    def cost(self, upstream: str | None, model: str, at: datetime, usage: Usage) -> Decimal | None:
        """The exact cost of `usage` of catalog model `model` at `upstream` at time `at`; None
        when the upstream has no cost tables or they do not price this model and usage then.
        Never raises for a priced request: it runs in the settlement."""
        catalog = self.tables.get(upstream) if upstream is not None else None
        if catalog is None:
            return None
        try:
            return price(catalog.resolve(model, at), usage).total
        except (ModelNotFound, InvalidRequest):
            return None


def load_upstream_costs(settings: Settings, currency: str) -> UpstreamCosts:
    """The cost tables named in TOLLGATE_UPSTREAMS_FILE, validated as rate tables and required
    to be in `currency` (the catalog's: a margin subtracts one from the other, and no exchange
    rate is guessed)."""
    path = settings.upstreams_file
    if path is None:
        return UpstreamCosts()
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UpstreamConfigError(f"{path}: {exc}") from exc
    named: dict[str, tuple[str, object]] = {}  # upstream → (its key in the file, the folder)
    if "default_costs" in raw:
        named["default"] = ("default_costs", raw["default_costs"])
    for name, spec in raw.get("upstreams", {}).items():
        if isinstance(spec, dict) and "costs" in spec:
            if name in named:
                raise UpstreamConfigError(
                    f"{path}: upstreams.{name}.costs: `default_costs` already prices {name}"
                )
            named[name] = (f"upstreams.{name}.costs", spec["costs"])
    tables: dict[str, Catalog] = {}
    for name, (key, folder) in named.items():
        if not isinstance(folder, str) or not folder.strip():
            raise UpstreamConfigError(f"{path}: {key}: expected the name of a folder")
        directory = path.parent / folder
        try:
            catalog = load_catalog(directory)
        except PricingConfigError as exc:
            raise UpstreamConfigError(f"{path}: {key}: {exc}") from exc
        if catalog.currency != currency:
            raise UpstreamConfigError(
                f"{path}: {key}: the cost tables in {directory} are in {catalog.currency}, the "
                f"rate tables in {currency}; upstream costs must be in the rate tables' currency"
            )
        tables[name] = catalog
    return UpstreamCosts(tables)
