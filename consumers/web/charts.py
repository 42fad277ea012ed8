"""The customer page's pictures, drawn on the server as inline SVG (no script, no CDN)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from html import escape

WIDTH, HEIGHT, PAD = 760, 220, 36


def _money(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:.1f}M"
    if value >= 1_000:
        return f"{value / 1_000:.0f}k"
    return f"{value:.0f}"


def weekly_chart(
    weeks: Sequence[datetime],
    orders: Sequence[int],
    revenue: Sequence[float],
    baseline_per_week: float,
    openings: Sequence[tuple[datetime, str]],
    labels: dict[str, str],
) -> str:
    """Bars: revenue per week; dots: orders per week (right axis); a dashed line:
    the customer's usual revenue per week; a red tick at each warning's opening."""
    n = len(weeks)
    if not n:
        return ""
    top = max([*revenue, baseline_per_week, 1.0]) * 1.1
    most_orders = max([*orders, 1]) * 1.1
    inner_w, inner_h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD
    step = inner_w / n

    def x(i: float) -> float:
        return PAD + i * step

    def y(value: float) -> float:
        return PAD + inner_h * (1 - value / top)

    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT + 24}" '
        f'xmlns="http://www.w3.org/2000/svg" aria-label="{escape(labels["title"])}">',
        f'<line x1="{PAD}" y1="{PAD + inner_h}" x2="{WIDTH - PAD}" y2="{PAD + inner_h}" '
        'stroke="#888"/>',
        f'<text x="{PAD - 4}" y="{PAD + 4}" text-anchor="end" class="axis">{_money(top)}</text>',
        f'<text x="{PAD - 4}" y="{PAD + inner_h}" text-anchor="end" class="axis">0</text>',
        f'<text x="{WIDTH - PAD + 4}" y="{PAD + 4}" class="axis orders-axis">'
        f"{most_orders:.1f}</text>",
    ]
    for i, amount in enumerate(revenue):
        if amount > 0:
            parts.append(
                f'<rect class="revenue" x="{x(i) + 1:.1f}" y="{y(amount):.1f}" '
                f'width="{max(step - 2, 1):.1f}" height="{PAD + inner_h - y(amount):.1f}">'
                f"<title>{weeks[i]:%Y-%m-%d}: {amount:,.0f}, {orders[i]}</title></rect>"
            )
    for i, count in enumerate(orders):
        if count:
            cy = PAD + inner_h * (1 - count / most_orders)
            parts.append(f'<circle class="orders" cx="{x(i + 0.5):.1f}" cy="{cy:.1f}" r="2.5"/>')
    if baseline_per_week > 0:
        parts.append(
            f'<line class="baseline" x1="{PAD}" x2="{WIDTH - PAD}" '
            f'y1="{y(baseline_per_week):.1f}" y2="{y(baseline_per_week):.1f}"/>'
        )
    first = weeks[0]
    for when, title in openings:
        at = (when - first).days / 7
        if 0 <= at <= n:
            parts.append(
                f'<line class="opening" x1="{x(at):.1f}" x2="{x(at):.1f}" y1="{PAD}" '
                f'y2="{PAD + inner_h}"><title>{escape(title)} {when:%Y-%m-%d}</title></line>'
            )
    for i in range(0, n, max(1, n // 8)):
        parts.append(
            f'<text x="{x(i):.1f}" y="{PAD + inner_h + 14}" class="axis">{weeks[i]:%Y-%m-%d}</text>'
        )
    legend = [
        ("revenue", labels["revenue"]),
        ("orders", labels["orders"]),
        ("baseline", labels["baseline"]),
        ("opening", labels["opening"]),
    ]
    for k, (css, text) in enumerate(legend):
        lx = PAD + k * 180
        parts.append(
            f'<rect class="{css} key" x="{lx}" y="{HEIGHT + 8}" width="10" height="10"/>'
            f'<text x="{lx + 14}" y="{HEIGHT + 17}" class="axis">{escape(text)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def aging_chart(buckets: Sequence[tuple[str, float]]) -> str:
    """Horizontal bars of the overdue amount in each age bucket."""
    top = max([amount for _, amount in buckets] + [1.0])
    height = 26 * len(buckets) + 10
    parts = [
        f'<svg class="chart aging" role="img" viewBox="0 0 {WIDTH} {height}" '
        'xmlns="http://www.w3.org/2000/svg">'
    ]
    for i, (label, amount) in enumerate(buckets):
        y = 5 + i * 26
        width = (WIDTH - 260) * amount / top
        parts.append(
            f'<text x="120" y="{y + 14}" text-anchor="end" class="axis">{escape(label)}</text>'
            f'<rect class="overdue" x="130" y="{y}" width="{width:.1f}" height="18"/>'
            f'<text x="{136 + width:.1f}" y="{y + 14}" class="axis">{amount:,.0f}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
