"""`make bench`: every benchmark in turn; figures go into docs/benchmarks.md."""

from __future__ import annotations

from collections.abc import Callable

from bench import gateway_pull, intake, kpi_month, new_leads, sandbox_scale

BENCHMARKS: tuple[tuple[str, Callable[[], None]], ...] = (
    ("sandbox at scale", sandbox_scale.main),
    (
        "gateway pull: 50,000 deals and 200,000 activities",
        lambda: gateway_pull.main([]),
    ),
    ("new leads: 200 at once", lambda: new_leads.main([])),
    ("KPI: a month of 50,000 deals and 100 managers", lambda: kpi_month.main([])),
    ("intake: webhook acknowledgements and time to deal", lambda: intake.main([])),
)


def main() -> None:
    for title, benchmark in BENCHMARKS:
        print(f"== {title} ==", flush=True)
        benchmark()
        print(flush=True)


if __name__ == "__main__":
    main()
