"""A local fake of the parts of Stripe's HTTP API that Tollgate calls, and webhook helpers.

The fake is a real HTTP server on loopback: the official SDK talks to it through
`STRIPE_API_BASE`. It parses the form-encoded bodies the way Stripe does (`a[b][0][c]=v`),
records every request with its headers (Idempotency-Key included), replays the first response
for a repeated idempotency key, and answers with realistic JSON objects and errors.

Webhook payloads are signed exactly as Stripe signs them:
`Stripe-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

API_VERSION = "2025-09-30.clover"


def _id(prefix: str) -> str:
    return f"{prefix}_test_{uuid.uuid4().hex[:24]}"


def parse_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """`line_items[0][price_data][currency]=eur` → nested dicts; numeric keys become lists."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        parts = re.findall(r"[^\[\]]+", key)
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value

    def listify(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        converted = {k: listify(v) for k, v in node.items()}
        if converted and all(k.isdigit() for k in converted):
            return [converted[k] for k in sorted(converted, key=int)]
        return converted

    result: dict[str, Any] = listify(root)
    return result


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, str]  # the raw form fields, as sent
    params: dict[str, Any]  # the same, nested

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("idempotency-key")


@dataclass
class FakeStripe:
    api_key: str = "sk_test_tollgate"
    # PaymentIntents on these payment methods are declined (402 card_error).
    declining_methods: set[str] = field(default_factory=lambda: {"pm_card_chargeDeclined"})
    # Status of a confirmed off-session PaymentIntent that is not declined.
    intent_status: str = "succeeded"
    # Seconds to wait before answering a PaymentIntent creation (widens race windows).
    intent_delay: float = 0.0
    requests: list[RecordedRequest] = field(default_factory=list)
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    _replays: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    # ── lifecycle ───────────────────────────────────────────────────────────────────────────

    def start(self) -> FakeStripe:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                fake._handle(self, "POST")

            def do_GET(self) -> None:
                fake._handle(self, "GET")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.objects.clear()
            self._replays.clear()
        self.intent_status = "succeeded"
        self.intent_delay = 0.0

    def calls(self, path: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    # ── HTTP ────────────────────────────────────────────────────────────────────────────────

    def _handle(self, http: BaseHTTPRequestHandler, method: str) -> None:
        length = int(http.headers.get("content-length") or 0)
        body = http.rfile.read(length).decode() if length else ""
        pairs = parse_qsl(body, keep_blank_values=True)
        headers = {k.lower(): v for k, v in http.headers.items()}
        path = http.path.split("?", 1)[0]
        request = RecordedRequest(method, path, headers, dict(pairs), parse_form(pairs))
        with self._lock:
            self.requests.append(request)
        status, payload, replayed = self._respond(request)
        raw = json.dumps(payload).encode()
        http.send_response(status)
        http.send_header("content-type", "application/json")
        http.send_header("content-length", str(len(raw)))
        http.send_header("request-id", _id("req"))
        if replayed:
            http.send_header("idempotent-replayed", "true")
        http.end_headers()
        http.wfile.write(raw)

    def _respond(self, request: RecordedRequest) -> tuple[int, dict[str, Any], bool]:
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return (
                401,
                _error("invalid_request_error", "Invalid API Key provided.", None),
                False,
            )
        key = request.idempotency_key
        if request.method == "POST" and key:
            with self._lock:
                if key in self._replays:
                    status, payload = self._replays[key]
                    return status, payload, True
        status, payload = self._route(request)
        if request.method == "POST" and key:
            with self._lock:
                self._replays.setdefault(key, (status, payload))
                status, payload = self._replays[key]
        return status, payload, False

    def _route(self, request: RecordedRequest) -> tuple[int, dict[str, Any]]:
        p = request.params
        if request.method == "POST" and request.path == "/v1/customers":
            return 200, self._store(
                {
                    "id": _id("cus"),
                    "object": "customer",
                    "created": int(time.time()),
                    "name": p.get("name"),
                    "email": p.get("email"),
                    "metadata": p.get("metadata", {}),
                    "invoice_settings": {"default_payment_method": None},
                    "livemode": False,
                }
            )
        if request.method == "POST" and request.path == "/v1/checkout/sessions":
            return self._create_checkout_session(p)
        if request.method == "POST" and request.path == "/v1/payment_intents":
            return self._create_payment_intent(p)
        match = re.fullmatch(
            r"/v1/(payment_intents|customers|checkout/sessions)/([^/]+)", request.path
        )
        if request.method == "GET" and match and match.group(2) in self.objects:
            return 200, self.objects[match.group(2)]
        return 404, _error(
            "invalid_request_error", f"Unrecognized request URL ({request.path}).", None
        )

    def _store(self, obj: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.objects[obj["id"]] = obj
        return obj

    def _create_checkout_session(self, p: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        items = p.get("line_items") or []
        if p.get("mode") not in ("payment", "setup", "subscription") or not items:
            return 400, _error("invalid_request_error", "Missing required param: mode.", "mode")
        if p.get("customer") and p.get("customer_creation"):
            return 400, _error(
                "invalid_request_error",
                "You may only specify one of these parameters: customer, customer_creation.",
                "customer_creation",
            )
        price = items[0].get("price_data") or {}
        quantity = int(items[0].get("quantity") or 1)
        session_id = _id("cs")
        amount = int(price.get("unit_amount")) * quantity
        return 200, self._store(
            {
                "id": session_id,
                "object": "checkout.session",
                "amount_subtotal": amount,
                "amount_total": amount,
                "client_reference_id": p.get("client_reference_id"),
                "created": int(time.time()),
                "currency": price.get("currency"),
                "customer": p.get("customer"),
                "expires_at": int(time.time()) + 86400,
                "livemode": False,
                "metadata": p.get("metadata", {}),
                "mode": p.get("mode"),
                "payment_intent": None,
                "payment_status": "unpaid",
                "status": "open",
                "success_url": p.get("success_url"),
                "cancel_url": p.get("cancel_url"),
                "url": f"https://checkout.stripe.test/c/pay/{session_id}",
            }
        )

    def _create_payment_intent(self, p: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if self.intent_delay:
            time.sleep(self.intent_delay)
        amount = int(p["amount"])
        intent = {
            "id": _id("pi"),
            "object": "payment_intent",
            "amount": amount,
            "amount_received": 0,
            "created": int(time.time()),
            "currency": p.get("currency"),
            "customer": p.get("customer"),
            "description": p.get("description"),
            "latest_charge": None,
            "last_payment_error": None,
            "livemode": False,
            "metadata": p.get("metadata", {}),
            "payment_method": p.get("payment_method"),
            "status": "requires_confirmation",
        }
        if p.get("confirm") == "true":
            if p.get("payment_method") in self.declining_methods:
                intent["status"] = "requires_payment_method"
                error = _error("card_error", "Your card was declined.", None, code="card_declined")
                error["error"]["decline_code"] = "generic_decline"
                intent["last_payment_error"] = dict(error["error"])
                error["error"]["payment_intent"] = intent
                self._store(intent)
                return 402, error
            intent["status"] = self.intent_status
            if self.intent_status == "succeeded":
                intent["amount_received"] = amount
                intent["latest_charge"] = _id("ch")
        return 200, self._store(intent)


def _error(
    type_: str, message: str, param: str | None, *, code: str | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"type": type_, "message": message}
    if param:
        error["param"] = param
    if code:
        error["code"] = code
    return {"error": error}


# ── webhooks ────────────────────────────────────────────────────────────────────────────────


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """The `Stripe-Signature` header Stripe sends with `payload`."""
    t = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def event(type_: str, obj: dict[str, Any], *, event_id: str | None = None) -> dict[str, Any]:
    return {
        "id": event_id or _id("evt"),
        "object": "event",
        "api_version": API_VERSION,
        "created": int(time.time()),
        "data": {"object": obj},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": type_,
    }


def checkout_session(
    account_id: str,
    amount_minor: int,
    *,
    currency: str = "eur",
    session_id: str | None = None,
    payment_status: str = "paid",
    payment_intent: str | None = None,
) -> dict[str, Any]:
    """A completed Checkout Session as `checkout.session.*` events carry it."""
    return {
        "id": session_id or _id("cs"),
        "object": "checkout.session",
        "amount_subtotal": amount_minor,
        "amount_total": amount_minor,
        "client_reference_id": account_id,
        "created": int(time.time()),
        "currency": currency,
        "customer": _id("cus"),
        "livemode": False,
        "metadata": {"account_id": account_id},
        "mode": "payment",
        "payment_intent": payment_intent or _id("pi"),
        "payment_status": payment_status,
        "status": "complete",
    }


def charge(
    payment_intent: str, amount_minor: int, *, refunded_minor: int, currency: str = "eur"
) -> dict[str, Any]:
    """A charge as `charge.refunded` carries it (cumulative `amount_refunded`)."""
    return {
        "id": f"ch_for_{payment_intent}",
        "object": "charge",
        "amount": amount_minor,
        "amount_captured": amount_minor,
        "amount_refunded": refunded_minor,
        "currency": currency,
        "livemode": False,
        "paid": True,
        "payment_intent": payment_intent,
        "refunded": refunded_minor == amount_minor,
        "status": "succeeded",
    }


def dispute(payment_intent: str, amount_minor: int, *, currency: str = "eur") -> dict[str, Any]:
    return {
        "id": _id("dp"),
        "object": "dispute",
        "amount": amount_minor,
        "charge": f"ch_for_{payment_intent}",
        "currency": currency,
        "livemode": False,
        "payment_intent": payment_intent,
        "reason": "fraudulent",
        "status": "needs_response",
    }


def payment_intent(
    account_id: str,
    amount_minor: int,
    *,
    purpose: str,
    status: str = "succeeded",
    customer: str | None = None,
    payment_method: str | None = None,
    intent_id: str | None = None,
    attempt_id: str | None = None,
    currency: str = "eur",
    created: int | None = None,
) -> dict[str, Any]:
    metadata = {"account_id": account_id, "purpose": purpose}
    if attempt_id:
        metadata["attempt_id"] = attempt_id
    return {
        "id": intent_id or _id("pi"),
        "object": "payment_intent",
        "amount": amount_minor,
        "amount_received": amount_minor if status == "succeeded" else 0,
        "created": created or int(time.time()),
        "currency": currency,
        "customer": customer,
        "last_payment_error": None
        if status == "succeeded"
        else {"code": "card_declined", "message": "Your card was declined."},
        "livemode": False,
        "metadata": metadata,
        "payment_method": payment_method,
        "setup_future_usage": "off_session" if purpose == "topup" else None,
        "status": status,
    }
