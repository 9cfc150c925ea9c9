"""The demo's summary: tables a person reads at a glance."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from northpole.demo.season import Report


def _rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f}/s" if seconds > 0 else "-"


def render(report: Report, console: Console) -> None:
    """Print the season's summary tables."""
    steps = Table(title="The season", title_justify="left")
    steps.add_column("step")
    steps.add_column("count", justify="right")
    steps.add_column("seconds", justify="right")
    steps.add_column("rate", justify="right")
    steps.add_row("gifts registered", f"{report.gifts:,}", f"{report.register_s:.2f}",
                  _rate(report.gifts, report.register_s))  # fmt: skip
    steps.add_row("tasks submitted", f"{report.tasks:,}", f"{report.submit_s:.2f}",
                  _rate(report.tasks, report.submit_s))  # fmt: skip
    steps.add_row("tasks run to the end", f"{report.tasks:,}", f"{report.drain_s:.2f}",
                  _rate(report.tasks, report.drain_s))  # fmt: skip
    console.print(steps)

    gifts = Table(title="Gifts by status", title_justify="left")
    gifts.add_column("status")
    gifts.add_column("gifts", justify="right")
    for status, count in sorted(report.by_status.items(), key=lambda kv: -kv[1]):
        gifts.add_row(status, f"{count:,}")
    console.print(gifts)

    timings = Table(title="Task timings (a sample, ms)", title_justify="left")
    timings.add_column("what")
    timings.add_column("n", justify="right")
    timings.add_column("p50", justify="right")
    timings.add_column("p99", justify="right")
    for what, row in report.timings_ms.items():
        timings.add_row(what, f"{row['n']:,.0f}", f"{row['p50']:,.1f}", f"{row['p99']:,.1f}")
    console.print(timings)

    retries = Table(title="Retries", title_justify="left")
    retries.add_column("flaky tasks (fail their first attempt)", justify="right")
    retries.add_column("completed on a retry", justify="right")
    retries.add_row(f"{report.flaky:,}", f"{report.retried_ok:,}")
    console.print(retries)

    exchange = Table(title="Gift exchange", title_justify="left")
    exchange.add_column("exchange")
    exchange.add_column("phase")
    exchange.add_column("elves", justify="right")
    exchange.add_column("match + commit", justify="right")
    exchange.add_column("opened by their elf", justify="right")
    exchange.add_column("commitments verified", justify="right")
    exchange.add_row(
        report.exchange_id,
        report.exchange_phase,
        f"{report.participants}",
        f"{report.match_s * 1000:,.0f} ms",
        f"{report.opened}",
        f"{report.commitments_ok}",
    )
    console.print(exchange)
