"""Rendering the dashboard's Jinja templates into HTML responses.

The templates are rendered through Litestar's Jinja engine owned by this domain, because the
app-wide `template_config` belongs to `create_app`; every page gets the CSRF token, the
signed-in account and a one-time flash message from the session.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from litestar import Request, Response
from litestar.enums import MediaType
from litestar.plugins.jinja import JinjaTemplateEngine

from app.dashboard import format as fmt
from app.dashboard.security import CSRF_FIELD, csrf_token
from app.money import money_str

HERE = Path(__file__).resolve().parent
TEMPLATES_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"
STATIC_PATH = "/dashboard/static"
FLASH = "f"  # session key of the one-time message


@cache
def _static_version(name: str) -> str:
    # The content hash in the URL lets browsers cache the file for as long as it is unchanged.
    return hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest()[:10]


def static_url(name: str) -> str:
    return f"{STATIC_PATH}/{name}?v={_static_version(name)}"


def _engine() -> JinjaTemplateEngine:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        # A misspelt name in a template fails loudly in the tests instead of rendering empty.
        undefined=StrictUndefined,
    )
    env.filters.update(
        money=fmt.money,
        plain=money_str,
        exact_money=fmt.exact_money,
        count=fmt.count,
        short_day=fmt.short_day,
        weekday=fmt.weekday,
        instant=fmt.instant,
        in_zone=fmt.in_zone,
        month_name=fmt.month_name,
    )
    env.globals.update(static=static_url, csrf_field_name=CSRF_FIELD)
    return JinjaTemplateEngine.from_environment(env)


ENGINE = _engine()


def flash(request: Request[Any, Any, Any], message: str) -> None:
    """A message for the next page this browser renders (after a redirect)."""
    request.session[FLASH] = message


def render(request: Request[Any, Any, Any], template: str, **context: Any) -> str:
    session = request.scope.get("session")
    message = session.pop(FLASH, None) if isinstance(session, dict) else None
    context.setdefault("flash", message)
    context.setdefault("viewer", None)
    context.setdefault("nav", None)
    return ENGINE.get_template(template).render(
        csrf_value=csrf_token(request), path=request.url.path, **context
    )


def page(
    request: Request[Any, Any, Any], template: str, *, status: int = 200, **context: Any
) -> Response[str]:
    return Response(
        render(request, template, **context), media_type=MediaType.HTML, status_code=status
    )
