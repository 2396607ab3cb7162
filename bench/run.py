"""`make bench`: every benchmark in turn; figures go into docs/benchmarks.md."""

from __future__ import annotations

from bench import sandbox_scale


def main() -> None:
    print("== sandbox at scale ==")
    sandbox_scale.main()


if __name__ == "__main__":
    main()
