"""Small charts of the node's own metrics: exchanges per minute and exchange
latency (p50, p99) over the last half hour, as inline SVG.

A :class:`MetricsSampler` reads the node's NodeMetrics in process every few
seconds into a ring buffer (bounded: the window divided by the interval); a
chart compares samples a minute apart, as Prometheus' ``increase`` and
``histogram_quantile`` would.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.core.metrics import NodeMetrics


@dataclass(frozen=True)
class Sample:
    """Totals read at one instant: exchanges (every direction and outcome), and
    the cumulative bucket counts of outgoing exchange latency."""

    at: float
    exchanges: float
    buckets: tuple[tuple[float, float], ...]  # (upper bound in seconds, cumulative count)


@dataclass(frozen=True)
class Minute:
    """One minute of the chart: its end time, exchanges, latency quantiles (s)."""

    end: float
    exchanges: float
    p50: float | None
    p99: float | None


def read_sample(metrics: NodeMetrics, now: float) -> Sample:
    exchanges = 0.0
    for family in metrics.exchanges.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                exchanges += sample.value
    buckets: dict[float, float] = {}
    for family in metrics.exchange_seconds.collect():
        for sample in family.samples:
            if sample.name.endswith("_bucket") and sample.labels.get("direction") == "out":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return Sample(now, exchanges, tuple(sorted(buckets.items())))


def quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """``histogram_quantile``: linear within the bucket holding the q-th value."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # beyond the last finite bucket: its bound
            width = count - lower_count
            share = (rank - lower_count) / width if width > 0 else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def minutes(samples: Sequence[Sample], count: int = 30, step: float = 60.0) -> list[Minute]:
    """The last ``count`` minutes that samples cover, oldest first."""
    if len(samples) < 2:
        return []
    result: list[Minute] = []
    end = samples[-1].at
    for index in range(count):
        stop_at = end - index * step
        start_at = stop_at - step
        if stop_at <= samples[0].at:
            break
        first = _at_or_before(samples, start_at) or samples[0]
        last = _at_or_before(samples, stop_at) or samples[0]
        delta = max(0.0, last.exchanges - first.exchanges)
        earlier = dict(first.buckets)
        window = [(bound, max(0.0, n - earlier.get(bound, 0.0))) for bound, n in last.buckets]
        result.append(Minute(stop_at, delta, quantile(0.5, window), quantile(0.99, window)))
    result.reverse()
    return result


def _at_or_before(samples: Sequence[Sample], moment: float) -> Sample | None:
    found = None
    for sample in samples:
        if sample.at > moment:
            break
        found = sample
    return found


class MetricsSampler:
    """Samples a node's metrics every ``interval`` seconds, keeping ``window`` seconds."""

    def __init__(
        self,
        metrics: NodeMetrics,
        *,
        interval: float = 5.0,
        window: float = 1860.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.metrics = metrics
        self.interval = interval
        self.samples: deque[Sample] = deque(maxlen=int(window / interval) + 1)
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        self.samples.append(read_sample(self.metrics, self._clock()))

    def start(self) -> None:
        if self._task is None:
            self.sample()
            self._task = asyncio.create_task(self._run(), name="console-metrics-sampler")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.sample()

    async def stop(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def minutes(self) -> list[Minute]:
        """The charted minutes, with a fresh sample taken now as the last one."""
        current = [*self.samples, read_sample(self.metrics, self._clock())]
        return minutes(current)


WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM, PAD_TOP = 600, 160, 48, 24, 10
#: Minutes a chart spans: the data fill its right end (a young node's few
#: minutes are narrow bars at the right, not one wide one).
SLOTS = 30


def bar_chart(title: str, data: Sequence[Minute]) -> str:
    """Exchanges per minute as bars, with a title and axis labels (inline SVG)."""
    peak = max((m.exchanges for m in data), default=0.0) or 1.0
    inner_w, inner_h = WIDTH - PAD_LEFT - 8, HEIGHT - PAD_BOTTOM - PAD_TOP
    bar = inner_w / SLOTS
    offset = max(SLOTS - len(data), 0)
    parts = [_svg_open(title), _axes(f"{peak:g}", "0")]
    for index, minute in enumerate(data[-SLOTS:]):
        height = inner_h * minute.exchanges / peak
        x = PAD_LEFT + (offset + index) * bar + 1
        y = PAD_TOP + inner_h - height
        parts.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(bar - 2, 1):.1f}" '
            f'height="{height:.1f}" fill="#2b6cb0"><title>{minute.exchanges:g}</title></rect>'
        )
    parts.append(_time_labels(data))
    parts.append("</svg>")
    return "".join(parts)


def latency_chart(title: str, data: Sequence[Minute]) -> str:
    """p50 (solid) and p99 (dashed) latency per minute in milliseconds (inline SVG)."""
    values = [v for m in data for v in (m.p50, m.p99) if v is not None]
    peak = (max(values) if values else 0.0) * 1000 or 1.0
    inner_w, inner_h = WIDTH - PAD_LEFT - 8, HEIGHT - PAD_BOTTOM - PAD_TOP
    step = inner_w / (SLOTS - 1)
    offset = max(SLOTS - len(data), 0)
    parts = [_svg_open(title), _axes(f"{peak:.3g} ms", "0")]
    for attribute, dash in (("p50", ""), ("p99", ' stroke-dasharray="6 4"')):
        points = []
        for index, minute in enumerate(data[-SLOTS:]):
            value = getattr(minute, attribute)
            if value is None:
                continue
            x = PAD_LEFT + (offset + index) * step
            y = PAD_TOP + inner_h - inner_h * value * 1000 / peak
            points.append(f"{x:.1f},{y:.1f}")
        if len(points) == 1:  # one minute: a dot, a line needs two
            cx, cy = points[0].split(",")
            parts.append(f'<circle cx="{cx}" cy="{cy}" r="3" fill="#1a202c"/>')
        elif points:
            parts.append(
                f'<polyline points="{" ".join(points)}" fill="none" stroke="#1a202c" '
                f'stroke-width="2"{dash}/>'
            )
    parts.append(_time_labels(data))
    parts.append("</svg>")
    return "".join(parts)


def _svg_open(title: str) -> str:
    text = html.escape(title)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" aria-label="{text}"><title>{text}</title>'
    )


def _axes(top: str, bottom: str) -> str:
    base = HEIGHT - PAD_BOTTOM
    return (
        f'<line x1="{PAD_LEFT}" y1="{PAD_TOP}" x2="{PAD_LEFT}" y2="{base}" stroke="#4a5568"/>'
        f'<line x1="{PAD_LEFT}" y1="{base}" x2="{WIDTH - 8}" y2="{base}" stroke="#4a5568"/>'
        f'<text x="{PAD_LEFT - 4}" y="{PAD_TOP + 10}" text-anchor="end" font-size="11">'
        f"{html.escape(top)}</text>"
        f'<text x="{PAD_LEFT - 4}" y="{base}" text-anchor="end" font-size="11">'
        f"{html.escape(bottom)}</text>"
    )


def _time_labels(data: Sequence[Minute]) -> str:
    if not data:
        return ""
    start = data[-1].end - (SLOTS - 1) * 60
    first = time.strftime("%H:%M", time.gmtime(start))
    last = time.strftime("%H:%M", time.gmtime(data[-1].end))
    y = HEIGHT - 6
    return (
        f'<text x="{PAD_LEFT}" y="{y}" font-size="11">{first} UTC</text>'
        f'<text x="{WIDTH - 8}" y="{y}" text-anchor="end" font-size="11">{last} UTC</text>'
    )
