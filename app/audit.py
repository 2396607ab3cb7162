"""The offline dependency audit: installed distributions against a committed snapshot
of the PyPA advisory database (deploy/audit/pypa-advisories.json).

`scripts/audit` runs pip-audit against a live service and falls back to this when
the service cannot be reached (or with AUDIT_OFFLINE=1):

    python -m app.audit [--snapshot FILE] [--ignore FILE] [--path DIR ...]

Every distribution the running interpreter sees (or the ones in the --path
directories) is matched by its PEP 503 name against each advisory that is not
withdrawn: its version is affected when the advisory lists it, or when it lies in
one of the advisory's ECOSYSTEM ranges (OSV's introduced / fixed / last_affected
events, compared as PEP 440 versions). Editable installs (leadloop itself) are not
from PyPI and are skipped, as pip-audit --skip-editable does.

The snapshot only knows advisories published up to its commit date; every run
prints that date and its age, so nobody takes it for a live check.

An ignore file (default deploy/audit/ignore.txt, if it exists) lists accepted
advisories, one a line: the id (or an alias), then the reason, which is required.

Exit status: 0 nothing known; 1 a finding, or an installed version that cannot be
compared with an advisory's ranges; 2 the audit cannot run (snapshot missing or
corrupt, ignore file invalid).
"""
# A command-line check: it reports on stdout and stderr.
# ruff: noqa: T201

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SNAPSHOT = REPO / "deploy" / "audit" / "pypa-advisories.json"
DEFAULT_IGNORE = REPO / "deploy" / "audit" / "ignore.txt"
SNAPSHOT_FORMAT = 1
EVENT_KINDS = ("introduced", "fixed", "last_affected")

CLEAN, FOUND, CANNOT_RUN = 0, 1, 2


class SnapshotError(Exception):
    """The snapshot file is missing or is not what scripts/audit-snapshot writes."""


class IgnoreFileError(Exception):
    """An ignore file entry without a reason, or an unreadable ignore file."""


def canonical_name(name: str) -> str:
    """PEP 503: runs of '-', '_' and '.' become one '-', lower case."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_version(text: str) -> Version | None:
    """The PEP 440 version, or None for a string that is not one."""
    try:
        return Version(text)
    except InvalidVersion:
        return None


_ZERO = Version("0")


def _version_order(version: Version | None, text: str = "") -> tuple[int, Version, str]:
    """A sort key: None (the "0" of a range, or an invalid version) first."""
    return (0, _ZERO, text) if version is None else (1, version, text)


@dataclass(frozen=True)
class Event:
    kind: str  # one of EVENT_KINDS
    version: str


@dataclass(frozen=True)
class Affected:
    """One package's affected versions in an advisory."""

    package: str  # PEP 503 name
    ranges: tuple[tuple[Event, ...], ...]
    versions: frozenset[str]

    def fixed_versions(self, installed: str) -> list[str]:
        """The `fixed` events newer than `installed`, oldest first (all of them when
        `installed` is not a PEP 440 version)."""
        current = parse_version(installed)
        found: dict[str, Version | None] = {}
        for events in self.ranges:
            for event in events:
                if event.kind == "fixed":
                    found[event.version] = parse_version(event.version)
        newer = [
            text
            for text, fixed in found.items()
            if current is None or fixed is None or fixed > current
        ]
        return sorted(newer, key=lambda text: _version_order(found[text], text))


@dataclass(frozen=True)
class Advisory:
    id: str
    aliases: tuple[str, ...]
    affected: tuple[Affected, ...]
    withdrawn: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return (self.id, *self.aliases)


@dataclass(frozen=True)
class Snapshot:
    source: str
    commit: str
    commit_date: datetime
    advisories: tuple[Advisory, ...]

    def for_package(self) -> dict[str, list[tuple[Advisory, Affected]]]:
        """Advisories in force (not withdrawn), by PEP 503 package name."""
        index: dict[str, list[tuple[Advisory, Affected]]] = {}
        for advisory in self.advisories:
            if advisory.withdrawn is not None:
                continue
            for entry in advisory.affected:
                index.setdefault(entry.package, []).append((advisory, entry))
        return index


def range_affects(version: Version, events: Sequence[Event]) -> bool | None:
    """Whether `version` lies in an OSV ECOSYSTEM range; None when one of the
    range's own versions is not PEP 440, so the range cannot be evaluated.

    The events are sorted by version ("0" before everything) and walked as the OSV
    schema says: an `introduced` at or below the version opens the range, a `fixed`
    at or below it closes it, a `last_affected` below it closes it.
    """
    parsed: list[tuple[Version | None, Event]] = []
    for event in events:
        bound = None if event.version == "0" else parse_version(event.version)
        if bound is None and event.version != "0":
            return None
        parsed.append((bound, event))
    # "0" (None) first; a stable sort keeps the file's order among equal versions.
    parsed.sort(key=lambda item: _version_order(item[0]))
    affected = False
    for bound, event in parsed:
        if event.kind == "introduced":
            if bound is None or version >= bound:
                affected = True
        elif bound is not None and (
            (event.kind == "fixed" and version >= bound)
            or (event.kind == "last_affected" and version > bound)
        ):
            affected = False
    return affected


def affects(entry: Affected, installed: str) -> bool | None:
    """Whether the installed version is affected: listed, or in a range. None when
    it is not listed and a range cannot be compared with it (it, or a range bound,
    is not a PEP 440 version)."""
    if installed in entry.versions:
        return True
    version = parse_version(installed)
    if version is not None and any(
        parse_version(listed) == version for listed in entry.versions
    ):
        return True  # "0.12.01" is the release 0.12.1 names
    undecided = False
    for events in entry.ranges:
        verdict = None if version is None else range_affects(version, events)
        if verdict:
            return True
        undecided = undecided or verdict is None
    return None if undecided else False


# The snapshot file.


def _field(record: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = record.get(key)
    if not isinstance(value, kind):
        raise SnapshotError(f"{where}: '{key}' is not a {kind.__name__}")
    return value


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SnapshotError(f"{where}: expected a list of strings")
    return tuple(value)


def _affected(record: Any, where: str) -> Affected:
    if not isinstance(record, dict):
        raise SnapshotError(f"{where}: an affected entry is not an object")
    ranges: list[tuple[Event, ...]] = []
    for events in _field(record, "ranges", list, where):
        if not isinstance(events, list):
            raise SnapshotError(f"{where}: a range is not a list of events")
        parsed = []
        for event in events:
            if (
                not isinstance(event, dict)
                or len(event) != 1
                or not set(event) <= set(EVENT_KINDS)
                or not isinstance(next(iter(event.values())), str)
            ):
                raise SnapshotError(f"{where}: unexpected range event {event!r}")
            ((kind, version),) = event.items()
            parsed.append(Event(kind, version))
        ranges.append(tuple(parsed))
    return Affected(
        package=canonical_name(_field(record, "package", str, where)),
        ranges=tuple(ranges),
        versions=frozenset(_strings(record.get("versions"), where)),
    )


def _advisory(record: Any, index: int) -> Advisory:
    if not isinstance(record, dict):
        raise SnapshotError(f"advisory #{index}: not an object")
    ident = _field(record, "id", str, f"advisory #{index}")
    withdrawn = record.get("withdrawn")
    if withdrawn is not None and not isinstance(withdrawn, str):
        raise SnapshotError(f"{ident}: 'withdrawn' is not a date string")
    affected = _field(record, "affected", list, ident)
    return Advisory(
        id=ident,
        aliases=_strings(record.get("aliases"), ident),
        affected=tuple(_affected(entry, ident) for entry in affected),
        withdrawn=withdrawn,
    )


def load_snapshot(path: Path) -> Snapshot:
    """The snapshot at `path`; SnapshotError when it is missing or malformed."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SnapshotError(
            f"{path} does not exist: build it with scripts/audit-snapshot"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SnapshotError(f"{path}: {exc}") from exc
    if not isinstance(document, dict):
        raise SnapshotError(f"{path}: not a JSON object")
    header = _field(document, "header", dict, str(path))
    if header.get("format") != SNAPSHOT_FORMAT:
        raise SnapshotError(
            f"{path}: format {header.get('format')!r}, expected {SNAPSHOT_FORMAT}"
        )
    try:
        commit_date = datetime.fromisoformat(
            _field(header, "commit_date", str, "header")
        )
    except ValueError as exc:
        raise SnapshotError(f"{path}: header commit_date: {exc}") from exc
    if commit_date.tzinfo is None:
        raise SnapshotError(f"{path}: header commit_date has no time zone")
    records = _field(document, "advisories", list, str(path))
    advisories = tuple(_advisory(record, n) for n, record in enumerate(records))
    if header.get("count") != len(advisories):
        raise SnapshotError(
            f"{path}: the header counts {header.get('count')!r} advisories, "
            f"the file holds {len(advisories)} (truncated or edited?)"
        )
    return Snapshot(
        source=_field(header, "source", str, "header"),
        commit=_field(header, "commit", str, "header"),
        commit_date=commit_date.astimezone(UTC),
        advisories=advisories,
    )


def load_ignores(path: Path) -> dict[str, str]:
    """Accepted advisories, id -> reason, from lines `ID reason...` (`#` comments).
    IgnoreFileError for an entry without a reason or an id given twice."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise IgnoreFileError(f"{path}: {exc}") from exc
    ignores: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue  # a reason may hold a '#' ("see #123"): whole-line comments only
        ident, *rest = text.split(None, 1)
        reason = rest[0].strip() if rest else ""
        if not reason:
            raise IgnoreFileError(
                f"{path}:{number}: {ident} has no reason; write why it is accepted "
                "after the id, e.g. 'PYSEC-2023-74 only used by the test suite'"
            )
        if ident in ignores:
            raise IgnoreFileError(f"{path}:{number}: {ident} is listed twice")
        ignores[ident] = reason
    return ignores


# The installed distributions.


@dataclass(frozen=True)
class Installed:
    name: str  # as the distribution spells it
    version: str
    editable: bool

    @property
    def key(self) -> str:
        return canonical_name(self.name)


def _is_editable(distribution: metadata.Distribution) -> bool:
    """PEP 610: direct_url.json says {"dir_info": {"editable": true}}."""
    try:
        direct = json.loads(distribution.read_text("direct_url.json") or "{}")
    except ValueError:
        return False
    info = direct.get("dir_info") if isinstance(direct, dict) else None
    return isinstance(info, dict) and info.get("editable") is True


def installed_distributions(paths: Sequence[str] | None = None) -> list[Installed]:
    """Each distribution once, sorted by name: from `paths`, or from sys.path."""
    found: dict[tuple[str, str], Installed] = {}
    search = (
        metadata.distributions()
        if paths is None
        else metadata.distributions(path=list(paths))
    )
    for distribution in search:
        name = distribution.metadata["Name"]
        version = distribution.version
        if not name or not version:
            continue  # a broken install without metadata: nothing to match
        item = Installed(name, version, _is_editable(distribution))
        found.setdefault((item.key, version), item)
    return sorted(found.values(), key=lambda item: (item.key, item.version))


# The audit.


@dataclass(frozen=True)
class Finding:
    advisory: Advisory
    package: Installed
    fixed: tuple[str, ...]
    decided: bool  # False: the versions could not be compared

    def line(self) -> str:
        aliases = (
            f" ({', '.join(self.advisory.aliases)})" if self.advisory.aliases else ""
        )
        fixed = (
            f"fixed in {', '.join(self.fixed)}"
            if self.fixed
            else "no fixed version known"
        )
        what = (
            "is affected"
            if self.decided
            else "could not be compared with the advisory's ranges (not PEP 440)"
        )
        return (
            f"{self.advisory.id}{aliases}: {self.package.name} "
            f"{self.package.version} {what}; {fixed}"
        )


def audit(snapshot: Snapshot, installed: Iterable[Installed]) -> list[Finding]:
    """Every (advisory, installed distribution) that is, or may be, affected."""
    index = snapshot.for_package()
    findings = []
    for package in installed:
        if package.editable:
            continue
        for advisory, entry in index.get(package.key, []):
            verdict = affects(entry, package.version)
            if verdict is not False:
                fixed = tuple(entry.fixed_versions(package.version))
                findings.append(Finding(advisory, package, fixed, verdict is True))
    return findings


def age_line(snapshot: Snapshot, now: datetime) -> str:
    days = (now.astimezone(UTC).date() - snapshot.commit_date.date()).days
    return (
        f"Snapshot of {snapshot.commit_date:%Y-%m-%d} ({days} days old): advisories "
        "published since then are NOT checked; this is not a live audit."
    )


def main(argv: Sequence[str] | None = None, *, now: datetime | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.audit",
        description="Audit installed distributions against the committed snapshot "
        "of the PyPA advisory database (offline).",
    )
    parser.add_argument("--snapshot", type=Path, default=DEFAULT_SNAPSHOT)
    parser.add_argument(
        "--ignore",
        type=Path,
        default=None,
        help=f"accepted advisories (default: {DEFAULT_IGNORE}, when it exists)",
    )
    parser.add_argument(
        "--path",
        action="append",
        metavar="DIR",
        help="look for distributions in DIR (a site-packages) instead of sys.path",
    )
    parser.add_argument(
        "--ignored-ids",
        action="store_true",
        help="print the ignore file's ids, one a line, and exit (for pip-audit)",
    )
    args = parser.parse_args(argv)

    ignore_path = args.ignore
    if ignore_path is None and DEFAULT_IGNORE.exists():
        ignore_path = DEFAULT_IGNORE
    try:
        ignores = {} if ignore_path is None else load_ignores(ignore_path)
    except IgnoreFileError as exc:
        print(f"audit: {exc}", file=sys.stderr)
        return CANNOT_RUN
    if args.ignored_ids:
        for ident in ignores:
            print(ident)
        return CLEAN

    try:
        snapshot = load_snapshot(args.snapshot)
    except SnapshotError as exc:
        print(f"audit: cannot read the advisory snapshot: {exc}", file=sys.stderr)
        return CANNOT_RUN

    installed = installed_distributions(args.path)
    in_force = sum(1 for a in snapshot.advisories if a.withdrawn is None)
    print(
        f"Offline audit of {len(installed)} installed distributions against "
        f"{in_force} advisories of {snapshot.source} "
        f"(commit {snapshot.commit[:12]})."
    )
    print(age_line(snapshot, now or datetime.now(UTC)))
    for package in installed:
        if package.editable:
            print(f"Skipped {package.name} {package.version}: an editable install.")

    findings = audit(snapshot, installed)
    failing = []
    used: set[str] = set()
    for finding in findings:
        accepted = [name for name in finding.advisory.names if name in ignores]
        if accepted:
            used.update(accepted)
            print(f"Ignored {finding.line()} (reason: {ignores[accepted[0]]})")
        else:
            failing.append(finding)
    for ident in ignores.keys() - used:
        print(f"Note: the ignore entry {ident} matches nothing installed.")
    for finding in failing:
        print(finding.line())

    if not failing:
        print("No known vulnerability in the snapshot's advisories.")
        return CLEAN
    packages = {finding.package.key for finding in failing}
    print(
        f"{len(failing)} known vulnerabilities in {len(packages)} "
        f"{'package' if len(packages) == 1 else 'packages'} (offline snapshot)."
    )
    return FOUND


if __name__ == "__main__":
    sys.exit(main())
