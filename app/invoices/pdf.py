"""The invoice as a PDF a business can file: fpdf2, pure Python, no browser or system binary.

Everything printed comes from the stored invoice (seller and customer are snapshots taken at
issue), so rendering it again years later gives the same document. The PDF's dates are the
invoice's, which makes the output byte-for-byte reproducible.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

from fpdf import FPDF
from fpdf.fonts import FontFace

from app.db.models import Invoice, InvoiceLine
from app.invoices.compute import format_money

# The PDF core fonts cover Windows-1252 (€, accents); other characters print as "?".
ENCODING = "windows-1252"


def _text(value: object) -> str:
    return str(value).encode(ENCODING, "replace").decode(ENCODING)


def _date(value: Any) -> str:
    return str(value.strftime("%Y-%m-%d"))


class _InvoicePDF(FPDF):
    def __init__(self, number: str) -> None:
        super().__init__(orientation="portrait", unit="mm", format="A4")
        self.number = number
        self.core_fonts_encoding = ENCODING
        self.set_margins(18, 18, 18)
        self.set_auto_page_break(auto=True, margin=20)

    def footer(self) -> None:
        self.set_y(-14)
        self.set_font("helvetica", size=8)
        self.set_text_color(120)
        self.cell(0, 5, _text(f"{self.number}  ·  page {self.page_no()} of {{nb}}"), align="C")


def render_pdf(invoice: Invoice, lines: list[InvoiceLine]) -> bytes:
    seller: dict[str, Any] = invoice.seller
    customer: dict[str, Any] = invoice.customer
    currency = invoice.currency
    pdf = _InvoicePDF(invoice.number)
    pdf.set_title(f"Invoice {invoice.number}")
    pdf.set_author(_text(seller.get("name") or ""))
    pdf.set_subject(f"Usage {_date(invoice.period_start)} to {_date(invoice.period_end)}")
    pdf.set_creator("Tollgate")
    pdf.set_creation_date(invoice.issued_at)
    pdf.add_page()

    # Seller (left) and the invoice's identity (right).
    top = pdf.get_y()
    pdf.set_font("helvetica", style="B", size=14)
    pdf.cell(100, 7, _text(seller.get("name") or ""), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("helvetica", size=9)
    for part in [*(seller.get("address") or []), seller.get("email"), _vat(seller)]:
        if part:
            pdf.cell(100, 4.5, _text(part), new_x="LMARGIN", new_y="NEXT")
    left_bottom = pdf.get_y()

    pdf.set_xy(120, top)
    pdf.set_font("helvetica", style="B", size=20)
    pdf.cell(72, 9, "INVOICE", align="R", new_x="LEFT", new_y="NEXT")
    pdf.set_font("helvetica", size=9)
    last_day = invoice.period_end - timedelta(days=1)
    for label, value in (
        ("Number", invoice.number),
        ("Issued", _date(invoice.issued_at)),
        ("Period", f"{_date(invoice.period_start)} to {_date(last_day)}"),
        ("Status", invoice.status),
    ):
        pdf.set_x(120)
        pdf.cell(72, 4.5, _text(f"{label}: {value}"), align="R", new_x="LEFT", new_y="NEXT")
    pdf.set_y(max(left_bottom, pdf.get_y()) + 8)

    # Customer.
    pdf.set_font("helvetica", style="B", size=9)
    pdf.cell(0, 5, "Bill to", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("helvetica", size=9)
    for part in (customer.get("name"), customer.get("email"), f"Account {customer['account_id']}"):
        if part:
            pdf.cell(0, 4.5, _text(part), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(6)

    # Lines.
    pdf.set_font("helvetica", size=8.5)
    with pdf.table(
        col_widths=(112, 30, 32),
        text_align=("LEFT", "RIGHT", "RIGHT"),
        borders_layout="HORIZONTAL_LINES",
        headings_style=FontFace(emphasis="BOLD", fill_color=(238, 238, 238)),
        line_height=5,
        padding=1.2,
    ) as table:
        heading = table.row()
        for title in ("Description", "Quantity", f"Amount ({currency})"):
            heading.cell(title)
        for line in lines:
            row = table.row()
            row.cell(_text(line.description))
            row.cell(f"{line.quantity:,}")
            row.cell(format_money(line.amount, currency))
    pdf.ln(4)

    # Totals.
    for label, amount, bold in (
        ("Subtotal", invoice.subtotal, False),
        ("Credits applied", -invoice.credits_applied, False),
        ("Amount due", invoice.amount_due, True),
    ):
        pdf.set_font("helvetica", style="B" if bold else "", size=10 if bold else 9)
        pdf.set_x(112)
        pdf.cell(48, 6, label, align="R")
        pdf.cell(32, 6, _text(format_money(_plain(amount), currency)), align="R")
        pdf.ln(6)

    pdf.ln(6)
    pdf.set_font("helvetica", size=7.5)
    pdf.set_text_color(90)
    pdf.multi_cell(
        0,
        4,
        _text(
            "Usage is paid from prepaid credit at the time of use; credits applied cover it. "
            "Line amounts are exact usage rounded half-up to the cent; the subtotal is the sum "
            f"of the rounded lines. All amounts in {currency}. Usage that reached us after an "
            "earlier invoice was issued is listed with the month it belongs to."
        ),
    )
    return bytes(pdf.output())


def _vat(seller: dict[str, Any]) -> str | None:
    vat = seller.get("vat_id")
    return f"VAT ID {vat}" if vat else None


def _plain(amount: Decimal) -> Decimal:
    # `-0` prints as "-€0.00"; an invoice shows a plain zero.
    return amount if amount != 0 else Decimal("0.00")
