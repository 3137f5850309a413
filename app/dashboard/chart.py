"""Geometry of the overview's daily-cost bar chart, drawn as server-side SVG (no script, no
library): one bar per day, zero-height bars for days without usage, a y axis with round steps.
Pure functions over Decimal costs; only the final coordinates are floats.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from app.dashboard.format import money, short_day

WIDTH = 720
HEIGHT = 240
LEFT = 64  # at least this much room for the y-axis labels
# Width of a label character in SVG units, at the largest font the stylesheet uses for the
# chart (on narrow screens, where the drawing is scaled down the most).
LABEL_CHAR = Decimal("12.5")
RIGHT = 8
TOP = 14
BOTTOM = 30  # room for the x-axis labels
TICKS = 4
BAR_FILL = Decimal("0.72")  # of each day's slot
_STEPS = (Decimal(1), Decimal(2), Decimal("2.5"), Decimal(5))


@dataclass(frozen=True, slots=True)
class Bar:
    day: date
    cost: Decimal
    x: float
    y: float
    width: float
    height: float
    slot_x: float  # the day's whole column, where hovering shows the tooltip
    slot_width: float
    title: str  # the tooltip: date and amount
    today: bool


@dataclass(frozen=True, slots=True)
class Tick:
    y: float
    label: str


@dataclass(frozen=True, slots=True)
class Label:
    x: float
    text: str
    anchor: str = "middle"  # SVG text-anchor


@dataclass(frozen=True, slots=True)
class Chart:
    width: int
    height: int
    left: int
    right: float  # x of the plot's right edge
    top: int
    baseline: float  # y of the zero line
    bars: list[Bar]
    y_ticks: list[Tick]
    x_labels: list[Label]
    total: Decimal
    empty: bool


def nice_step(largest: Decimal, ticks: int = TICKS) -> Decimal:
    """The smallest step of 1, 2, 2.5 or 5 × 10ⁿ with `ticks` steps reaching `largest`."""
    if largest <= 0:
        return Decimal("0.25")
    raw = largest / ticks
    exponent = raw.adjusted()
    for scale in (exponent, exponent + 1):
        for base in _STEPS:
            step = base.scaleb(scale)
            if step * ticks >= largest:
                return step.normalize()
    return Decimal(10).scaleb(exponent + 1)  # unreachable: 10ⁿ⁺¹ × ticks ≥ largest


def daily_chart(days: list[tuple[date, Decimal]], currency: str, today: date) -> Chart:
    """`days` in order, one entry per day (zero for a day without usage)."""
    largest = max((cost for _, cost in days), default=Decimal(0))
    step = nice_step(largest)
    top_value = step * TICKS
    tick_labels = [money(step * i, currency) for i in range(TICKS + 1)]
    left = max(LEFT, int(max(len(label) for label in tick_labels) * LABEL_CHAR) + 10)
    plot_width = Decimal(WIDTH - left - RIGHT)
    plot_height = Decimal(HEIGHT - TOP - BOTTOM)
    baseline = Decimal(HEIGHT - BOTTOM)
    slot = plot_width / max(len(days), 1)
    bar_width = slot * BAR_FILL
    bars = []
    for i, (when, cost) in enumerate(days):
        height = plot_height * cost / top_value if cost > 0 else Decimal(0)
        bars.append(
            Bar(
                day=when,
                cost=cost,
                x=_f(left + slot * i + (slot - bar_width) / 2),
                y=_f(baseline - height),
                width=_f(bar_width),
                height=_f(height),
                slot_x=_f(left + slot * i),
                slot_width=_f(slot),
                title=f"{when.isoformat()}: {money(cost, currency)}",
                today=when == today,
            )
        )
    ticks = [
        Tick(y=_f(baseline - plot_height * i / TICKS), label=label)
        for i, label in enumerate(tick_labels)
    ]
    # A date under every seventh bar, counted back from today's, so the newest is labelled.
    labels = [
        Label(x=_f(left + slot * i + slot / 2), text=short_day(when))
        for i, (when, _) in enumerate(days)
        if (len(days) - 1 - i) % 7 == 0
    ]
    if labels:  # the newest ends at the plot's edge rather than spilling over it
        labels[-1] = Label(x=WIDTH - RIGHT, text=labels[-1].text, anchor="end")
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        left=left,
        right=WIDTH - RIGHT,
        top=TOP,
        baseline=_f(baseline),
        bars=bars,
        y_ticks=ticks,
        x_labels=labels,
        total=sum((cost for _, cost in days), Decimal(0)),
        empty=largest <= 0,
    )


def _f(value: Decimal | int) -> float:
    return round(float(value), 2)
