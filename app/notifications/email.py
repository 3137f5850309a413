"""Customer emails (SPEC 11): text and HTML parts from templates, sent over SMTP with
aiosmtplib (STARTTLS when the server offers it; `smtps://` for TLS from the start)."""

from __future__ import annotations

from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any
from urllib.parse import unquote, urlsplit

import aiosmtplib
from jinja2 import Environment, PackageLoader, select_autoescape

from app.notifications.schemas import EMAIL_SUBJECTS, EventType

_templates = Environment(
    loader=PackageLoader("app.notifications", "templates"),
    autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
    keep_trailing_newline=True,
)


@dataclass(frozen=True, slots=True)
class SmtpServer:
    host: str
    port: int
    username: str | None
    password: str | None
    implicit_tls: bool

    @classmethod
    def from_url(cls, url: str) -> SmtpServer:
        """`smtp://user:pass@host:587` (STARTTLS when offered) or `smtps://…:465`."""
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError("TOLLGATE_SMTP_URL must look like smtp://user:pass@host:587")
        implicit = parts.scheme == "smtps"
        return cls(
            host=parts.hostname,
            port=parts.port or (465 if implicit else 587),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            implicit_tls=implicit,
        )

    async def send(self, message: EmailMessage, seconds: float) -> None:
        await aiosmtplib.send(
            message,
            hostname=self.host,
            port=self.port,
            username=self.username,
            password=self.password,
            use_tls=self.implicit_tls,
            # None: STARTTLS if the server offers it, plain otherwise (a local relay).
            start_tls=None if not self.implicit_tls else False,
            timeout=seconds,
        )


def compose(
    type_: EventType,
    data: dict[str, Any],
    *,
    sender: str,
    to: str,
    account_name: str,
    dashboard_url: str,
    message_id: str,
    attachment: tuple[str, bytes] | None = None,
) -> EmailMessage:
    """The email for an event: a text part, an HTML alternative, and an attachment (the
    invoice's PDF) when given."""
    context = {"data": data, "account_name": account_name, "dashboard_url": dashboard_url}
    message = EmailMessage()
    message["Subject"] = EMAIL_SUBJECTS[type_].format(**data)
    message["From"] = sender
    message["To"] = to
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(idstring=message_id)
    name = type_.value.replace(".", "_")
    message.set_content(_templates.get_template(f"{name}.txt").render(context))
    message.add_alternative(_templates.get_template(f"{name}.html").render(context), subtype="html")
    if attachment is not None:
        filename, content = attachment
        message.add_attachment(content, maintype="application", subtype="pdf", filename=filename)
    return message
