"""Rendering the console's pages: its own templates first, then the dashboard's (the base
layout, the macros and the chart), with the dashboard's filters, so both look alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined
from litestar import Request, Response
from litestar.enums import MediaType

from app.console.schemas import Permission
from app.dashboard import format as fmt
from app.dashboard.render import TEMPLATES_DIR as DASHBOARD_TEMPLATES
from app.dashboard.render import static_url
from app.dashboard.security import CSRF_FIELD, csrf_token
from app.money import money_str

TEMPLATES = Path(__file__).resolve().parent / "templates"
FLASH = "f"

_env = Environment(
    loader=ChoiceLoader([FileSystemLoader(TEMPLATES), FileSystemLoader(DASHBOARD_TEMPLATES)]),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
    undefined=StrictUndefined,
)
_env.filters.update(
    money=fmt.money,
    plain=money_str,
    exact_money=fmt.exact_money,
    count=fmt.count,
    short_day=fmt.short_day,
    instant=fmt.instant,
    month_name=fmt.month_name,
)
_env.globals.update(static=static_url, csrf_field_name=CSRF_FIELD, Permission=Permission)


def flash(request: Request[Any, Any, Any], message: str) -> None:
    request.session[FLASH] = message


def page(
    request: Request[Any, Any, Any],
    template: str,
    *,
    status: int = 200,
    **context: Any,
) -> Response[str]:
    session = request.scope.get("session")
    message = session.pop(FLASH, None) if isinstance(session, dict) else None
    context.setdefault("flash", message)
    context.setdefault("staff", None)
    context.setdefault("nav", None)
    html = _env.get_template(template).render(
        csrf_value=csrf_token(request), path=request.url.path, **context
    )
    return Response(html, media_type=MediaType.HTML, status_code=status)
