"""The offline dependency audit (app/audit.py), its snapshot builder
(scripts/audit-snapshot) and the committed snapshot of the PyPA advisory database."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from packaging.version import Version

from app.audit import (
    CANNOT_RUN,
    CLEAN,
    DEFAULT_SNAPSHOT,
    FOUND,
    Advisory,
    Affected,
    Event,
    IgnoreFileError,
    Installed,
    Snapshot,
    SnapshotError,
    affects,
    audit,
    canonical_name,
    installed_distributions,
    load_ignores,
    load_snapshot,
    main,
    range_affects,
)

REPO = Path(__file__).resolve().parents[2]
GIT = shutil.which("git")
NOW = datetime(2025, 1, 9, 12, 0, tzinfo=UTC)  # 91 days after 2024-10-10


def run(argv: list[str], **options: Any) -> subprocess.CompletedProcess[str]:
    """A command of ours (fixed arguments), its output captured as text."""
    return subprocess.run(  # noqa: S603  (our own commands, fixed arguments)
        argv, capture_output=True, text=True, check=False, **options
    )


def span(*events: tuple[str, str]) -> tuple[Event, ...]:
    return tuple(Event(kind, version) for kind, version in events)


def entry(
    *ranges: tuple[Event, ...], versions: tuple[str, ...] = (), package: str = "foo"
) -> Affected:
    return Affected(package, tuple(ranges), frozenset(versions))


FIXED_230 = span(("introduced", "0"), ("fixed", "2.3.0"))


class TestRanges:
    @pytest.mark.parametrize(
        ("version", "affected"),
        [
            ("0.1", True),
            ("2.2.1", True),
            ("2.3.0", False),
            ("2.3", False),
            ("3", False),
        ],
    )
    def test_introduced_zero_up_to_fixed(self, version: str, affected: bool) -> None:
        assert range_affects(Version(version), FIXED_230) is affected

    @pytest.mark.parametrize(
        ("version", "affected"), [("1.11.0", True), ("1.0", True), ("1.11.1", False)]
    )
    def test_last_affected_is_included(self, version: str, affected: bool) -> None:
        events = span(("introduced", "0"), ("last_affected", "1.11.0"))
        assert range_affects(Version(version), events) is affected

    @pytest.mark.parametrize(
        ("version", "affected"),
        [
            ("3.9", False),
            ("4.0", True),
            ("4.2", True),
            ("4.3", False),
            ("4.9", False),
            ("5.1", True),
            ("5.2", False),
        ],
    )
    def test_several_introduced_fixed_pairs_in_one_range(
        self, version: str, affected: bool
    ) -> None:
        events = span(
            ("introduced", "4.0"),
            ("fixed", "4.3"),
            ("introduced", "5.0"),
            ("fixed", "5.2"),
        )
        assert range_affects(Version(version), events) is affected

    def test_events_out_of_order_are_sorted_first(self) -> None:
        events = span(("fixed", "2.0"), ("introduced", "1.0"))
        assert range_affects(Version("1.5"), events) is True
        assert range_affects(Version("2.0"), events) is False

    def test_introduced_without_fix_affects_everything_since(self) -> None:
        events = span(("introduced", "1.2"))
        assert range_affects(Version("99.0"), events) is True
        assert range_affects(Version("1.1"), events) is False

    def test_pre_release_sorts_before_its_release(self) -> None:
        assert range_affects(
            Version("2.0.0rc1"), span(("introduced", "0"), ("fixed", "2.0.0"))
        )
        assert not range_affects(
            Version("2.0.0rc1"), span(("introduced", "2.0.0"), ("fixed", "2.1"))
        )
        assert range_affects(
            Version("2.1.0rc1"), span(("introduced", "2.0.0"), ("fixed", "2.1.0"))
        )

    def test_a_bound_that_is_not_pep_440_leaves_the_range_undecided(self) -> None:
        events = span(("introduced", "0"), ("fixed", "0.2.0-n653"))
        assert range_affects(Version("0.1"), events) is None


class TestAffects:
    def test_any_of_several_ranges(self) -> None:
        two = entry(
            span(("introduced", "1.0"), ("fixed", "1.1")),
            span(("introduced", "3.0"), ("fixed", "3.2")),
        )
        assert [affects(two, v) for v in ("1.0.5", "2.0", "3.1", "3.2")] == [
            True,
            False,
            True,
            False,
        ]

    def test_versions_list_alone(self) -> None:
        listed = entry(versions=("1.0", "0.12.01"))
        assert affects(listed, "1.0") is True
        assert affects(listed, "1.0.0") is True  # the same PEP 440 release
        assert affects(listed, "0.12.1") is True
        assert affects(listed, "1.1") is False

    def test_versions_list_catches_what_the_ranges_miss(self) -> None:
        assert affects(entry(FIXED_230, versions=("3.0",)), "3.0") is True

    def test_installed_version_that_is_not_pep_440(self) -> None:
        assert affects(entry(FIXED_230), "1.0-custom build") is None
        assert affects(entry(FIXED_230, versions=("weird-1",)), "weird-1") is True
        assert affects(entry(versions=("1.0",)), "weird-1") is False

    def test_fixed_versions_are_the_ones_newer_than_installed(self) -> None:
        pairs = entry(
            span(("introduced", "0"), ("fixed", "1.4.2")),
            span(("introduced", "2.0"), ("fixed", "2.0.7")),
        )
        assert pairs.fixed_versions("2.0.1") == ["2.0.7"]
        assert pairs.fixed_versions("1.0") == ["1.4.2", "2.0.7"]


@pytest.mark.parametrize(
    ("name", "canonical"),
    [("Foo_Bar", "foo-bar"), ("foo.bar", "foo-bar"), ("FOO--_.bar", "foo-bar")],
)
def test_names_are_pep_503_normalised(name: str, canonical: str) -> None:
    assert canonical_name(name) == canonical


def snapshot_of(*advisories: Advisory) -> Snapshot:
    return Snapshot(
        source="test",
        commit="0" * 40,
        commit_date=datetime(2024, 10, 10, tzinfo=UTC),
        advisories=advisories,
    )


class TestAudit:
    def test_installed_name_is_normalised_before_matching(self) -> None:
        snapshot = snapshot_of(
            Advisory("PYSEC-1", (), (entry(FIXED_230, package="foo-bar"),))
        )
        findings = audit(snapshot, [Installed("Foo_Bar", "1.0", editable=False)])
        assert [(f.advisory.id, f.package.name, f.fixed) for f in findings] == [
            ("PYSEC-1", "Foo_Bar", ("2.3.0",))
        ]

    def test_withdrawn_advisories_are_ignored(self) -> None:
        snapshot = snapshot_of(
            Advisory(
                "PYSEC-1", (), (entry(FIXED_230),), withdrawn="2023-07-25T12:32:00Z"
            )
        )
        assert audit(snapshot, [Installed("foo", "1.0", editable=False)]) == []

    def test_editable_installs_are_skipped(self) -> None:
        snapshot = snapshot_of(Advisory("PYSEC-1", (), (entry(FIXED_230),)))
        assert audit(snapshot, [Installed("foo", "1.0", editable=True)]) == []


@pytest.fixture(scope="module")
def committed() -> Snapshot:
    return load_snapshot(DEFAULT_SNAPSHOT)


class TestCommittedSnapshot:
    def test_header_names_its_source_commit_and_date(self, committed: Snapshot) -> None:
        header = json.loads(DEFAULT_SNAPSHOT.read_text())["header"]
        assert header["source"] == "https://github.com/pypa/advisory-database"
        assert header["licence"] == "CC-BY-4.0"
        assert committed.commit == "3ccb612573e2511ab5cad7dafecd838605c80cda"
        assert committed.commit_date == datetime(2024, 10, 10, 17, 35, 5, tzinfo=UTC)
        assert header["count"] == len(committed.advisories) > 2000

    def test_holds_facts_only_no_texts(self) -> None:
        text = DEFAULT_SNAPSHOT.read_text()
        assert '"details"' not in text
        assert '"summary"' not in text
        assert "Proxy-Authorization" not in text  # PYSEC-2023-74's details

    def test_flags_an_old_requests_and_passes_the_fixed_one(
        self, committed: Snapshot
    ) -> None:
        old = audit(committed, [Installed("requests", "2.30.0", editable=False)])
        assert [(f.advisory.id, f.fixed) for f in old] == [
            ("PYSEC-2023-74", ("2.31.0",))
        ]
        assert "CVE-2023-32681" in old[0].advisory.aliases
        assert audit(committed, [Installed("requests", "2.31.0", editable=False)]) == []

    def test_flags_an_old_jinja2(self, committed: Snapshot) -> None:
        found = audit(committed, [Installed("Jinja2", "2.10", editable=False)])
        assert {f.advisory.id for f in found} == {"PYSEC-2019-217", "PYSEC-2021-66"}
        assert audit(committed, [Installed("Jinja2", "3.1.4", editable=False)]) == []


# The command: a snapshot, a site-packages and an ignore file of the test's own.

TINY = {
    "header": {
        "format": 1,
        "source": "https://github.com/pypa/advisory-database",
        "commit": "a" * 40,
        "commit_date": "2024-10-10T17:35:05Z",
        "count": 2,
    },
    "advisories": [
        {
            "id": "PYSEC-2099-1",
            "aliases": ["CVE-2099-1"],
            "affected": [
                {
                    "package": "foo-bar",
                    "ranges": [[{"introduced": "0"}, {"fixed": "1.2"}]],
                    "versions": [],
                }
            ],
        },
        {
            "id": "PYSEC-2099-2",
            "aliases": [],
            "withdrawn": "2024-01-01T00:00:00Z",
            "affected": [
                {
                    "package": "safe",
                    "ranges": [[{"introduced": "0"}]],
                    "versions": [],
                }
            ],
        },
    ],
}


def write_snapshot(path: Path, document: dict[str, Any] = TINY) -> Path:
    path.write_text(json.dumps(document))
    return path


def site_packages(root: Path, *installed: tuple[str, str]) -> Path:
    """A directory of *.dist-info folders, as pip leaves them."""
    root.mkdir()
    for name, version in installed:
        info = root / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        )
    return root


def run_main(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    *installed: tuple[str, str],
    **opts: str,
) -> tuple[int, str, str]:
    site = site_packages(tmp_path / "site", *installed)
    argv = [
        "--snapshot",
        opts.get("snapshot", str(write_snapshot(tmp_path / "s.json"))),
    ]
    argv += ["--path", str(site)]
    if "ignore" in opts:
        argv += ["--ignore", opts["ignore"]]
    status = main(argv, now=NOW)
    out, err = capsys.readouterr()
    return status, out, err


class TestCommand:
    def test_finding_exits_1_with_id_aliases_package_and_fix(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        status, out, _ = run_main(tmp_path, capsys, ("Foo_Bar", "1.0"), ("safe", "1.0"))
        assert status == FOUND
        assert "PYSEC-2099-1 (CVE-2099-1): Foo_Bar 1.0 is affected; fixed in 1.2" in out
        assert "PYSEC-2099-2" not in out  # withdrawn
        assert "Snapshot of 2024-10-10 (91 days old)" in out
        assert "NOT checked" in out

    def test_clean_exits_0_and_still_says_how_old_the_snapshot_is(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        status, out, _ = run_main(tmp_path, capsys, ("foo-bar", "1.2"))
        assert status == CLEAN
        assert "Snapshot of 2024-10-10 (91 days old)" in out
        assert "No known vulnerability" in out

    def test_installed_distributions_reads_the_given_directory(
        self, tmp_path: Path
    ) -> None:
        site = site_packages(tmp_path / "site", ("Foo_Bar", "1.0"), ("b", "2"))
        found = installed_distributions([str(site)])
        assert [(d.name, d.version, d.key) for d in found] == [
            ("b", "2", "b"),
            ("Foo_Bar", "1.0", "foo-bar"),
        ]

    def test_missing_snapshot_exits_2(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        status, out, err = run_main(
            tmp_path, capsys, ("foo-bar", "1.0"), snapshot=str(tmp_path / "none.json")
        )
        assert status == CANNOT_RUN
        assert "does not exist: build it with scripts/audit-snapshot" in err
        assert out == ""

    @pytest.mark.parametrize(
        ("text", "problem"),
        [
            ('{"header": {"format": 1', "Expecting"),
            (json.dumps({**TINY, "advisories": TINY["advisories"][:1]}), "truncated"),
            (
                json.dumps({**TINY, "header": {**TINY["header"], "format": 9}}),
                "format 9",
            ),
        ],
    )
    def test_corrupt_snapshot_exits_2(
        self,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        text: str,
        problem: str,
    ) -> None:
        (tmp_path / "bad.json").write_text(text)
        status, _, err = run_main(
            tmp_path, capsys, ("foo-bar", "1.0"), snapshot=str(tmp_path / "bad.json")
        )
        assert status == CANNOT_RUN
        assert problem in err

    def test_module_run_in_a_subprocess_on_the_committed_snapshot(
        self, tmp_path: Path
    ) -> None:
        site = site_packages(tmp_path / "site", ("requests", "2.30.0"))
        result = run([sys.executable, "-m", "app.audit", "--path", str(site)], cwd=REPO)
        assert result.returncode == FOUND, result.stderr
        assert re.search(
            r"^Snapshot of 2024-10-10 \(\d+ days old\)", result.stdout, re.M
        )
        assert (
            "PYSEC-2023-74 (CVE-2023-32681, GHSA-j8r2-6x86-q33q): requests 2.30.0 "
            "is affected; fixed in 2.31.0"
        ) in result.stdout


class TestIgnoreFile:
    def test_accepted_advisory_is_listed_with_its_reason_and_passes(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        ignore = tmp_path / "ignore.txt"
        ignore.write_text(
            "# accepted, by alias\n\nCVE-2099-1  only the test suite imports it\n"
            "PYSEC-2000-1 an old one\n"
        )
        status, out, _ = run_main(
            tmp_path, capsys, ("foo-bar", "1.0"), ignore=str(ignore)
        )
        assert status == CLEAN
        assert "Ignored PYSEC-2099-1" in out
        assert "(reason: only the test suite imports it)" in out
        assert "the ignore entry PYSEC-2000-1 matches nothing installed" in out

    def test_entry_without_a_reason_is_an_error_naming_the_line(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        ignore = tmp_path / "ignore.txt"
        ignore.write_text("PYSEC-2099-7 reason here\nPYSEC-2099-1\n")
        status, out, err = run_main(
            tmp_path, capsys, ("foo-bar", "1.0"), ignore=str(ignore)
        )
        assert status == CANNOT_RUN
        assert f"{ignore}:2: PYSEC-2099-1 has no reason" in err
        assert out == ""

    def test_tab_separated_reason_kept_and_duplicate_ids_refused(
        self, tmp_path: Path
    ) -> None:
        ignore = tmp_path / "ignore.txt"
        ignore.write_text("PYSEC-1\tsee #12\n")
        assert load_ignores(ignore) == {"PYSEC-1": "see #12"}
        ignore.write_text("PYSEC-1 a\nPYSEC-1 b\n")
        with pytest.raises(IgnoreFileError, match="listed twice"):
            load_ignores(ignore)

    def test_ignored_ids_are_printed_for_pip_audit(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        ignore = tmp_path / "ignore.txt"
        ignore.write_text("PYSEC-1 one\nGHSA-xxxx-yyyy-zzzz two\n")
        assert main(["--ignore", str(ignore), "--ignored-ids"]) == CLEAN
        assert capsys.readouterr().out.split() == ["PYSEC-1", "GHSA-xxxx-yyyy-zzzz"]


# The builder, on a tiny repository shaped like pypa/advisory-database.

ADVISORY_FOO = """\
id: PYSEC-2020-5
details: A sentence of somebody else's that must not be copied.
affected:
- package:
    name: Foo_Bar
    ecosystem: PyPI
  ranges:
  - type: GIT
    repo: https://example.org/foo
    events:
    - introduced: "0"
    - fixed: 0123456789abcdef
  - type: ECOSYSTEM
    events:
    - introduced: "0"
    - fixed: "1.10"
  versions:
  - "1.9"
  - 1.0
aliases:
- GHSA-bbbb
- CVE-2020-5
"""
ADVISORY_OLD = """\
id: PYSEC-2019-1
summary: Withdrawn text.
withdrawn: 2023-08-22 06:18:00+00:00
affected:
- package:
    name: foo-bar
    ecosystem: PyPI
  ranges:
  - type: ECOSYSTEM
    events:
    - introduced: 2.0
    - last_affected: 2.1
"""
ADVISORY_NPM = """\
id: PYSEC-2021-9
affected:
- package:
    name: left-pad
    ecosystem: npm
"""


def test_builder_writes_facts_only_sorted_with_header(tmp_path: Path) -> None:
    assert GIT is not None, "the snapshot builder reads git: install git"
    source = tmp_path / "advisory-database"
    for path, text in {
        "vulns/foo-bar/PYSEC-2020-5.yaml": ADVISORY_FOO,
        "vulns/foo-bar/PYSEC-2019-1.yaml": ADVISORY_OLD,
        "vulns/left-pad/PYSEC-2021-9.yaml": ADVISORY_NPM,
        "README.md": "not an advisory\n",
    }.items():
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        (source / path).write_text(text)
    env = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.org",
        "GIT_AUTHOR_DATE": "2024-10-10T19:35:05+02:00",
        "GIT_COMMITTER_DATE": "2024-10-10T19:35:05+02:00",
    }
    for command in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "data"]):
        assert run([GIT, "-C", str(source), *command], env=env).returncode == 0
    # Uncommitted work is not part of HEAD, so not part of the snapshot.
    (source / "vulns/foo-bar/PYSEC-2024-0.yaml").write_text(ADVISORY_FOO)
    commit = run([GIT, "-C", str(source), "rev-parse", "HEAD"]).stdout.strip()
    output = tmp_path / "out" / "snapshot.json"

    builder = str(REPO / "scripts" / "audit-snapshot")
    result = run([sys.executable, builder, str(source), "--output", str(output)])

    assert result.returncode == 0, result.stderr
    assert "2 advisories (1 withdrawn)" in result.stdout
    text = output.read_text()
    assert json.loads(text) == {
        "header": {
            "format": 1,
            "source": "https://github.com/pypa/advisory-database",
            "title": "Python Packaging Advisory Database (PyPA and contributors)",
            "commit": commit,
            "commit_date": "2024-10-10T17:35:05Z",
            "licence": "CC-BY-4.0",
            "licence_url": "https://creativecommons.org/licenses/by/4.0/",
            "changes": (
                "Facts only: ids, aliases, PyPI package names (PEP 503), ECOSYSTEM "
                "range events, affected version lists and withdrawal dates. Summaries, "
                "details, references, severities and GIT ranges are left out."
            ),
            "count": 2,
            "withdrawn": 1,
        },
        "advisories": [
            {
                "id": "PYSEC-2019-1",
                "aliases": [],
                "withdrawn": "2023-08-22 06:18:00+00:00",
                "affected": [
                    {
                        "package": "foo-bar",
                        "ranges": [[{"introduced": "2.0"}, {"last_affected": "2.1"}]],
                        "versions": [],
                    }
                ],
            },
            {
                "id": "PYSEC-2020-5",
                "aliases": ["CVE-2020-5", "GHSA-bbbb"],
                "affected": [
                    {
                        "package": "foo-bar",
                        "ranges": [[{"introduced": "0"}, {"fixed": "1.10"}]],
                        "versions": ["1.0", "1.9"],
                    }
                ],
            },
        ],
    }
    assert "somebody else" not in text
    assert text.count("\n") == 5  # header, "advisories", one line each, closing
    # What the builder writes, the checker reads.
    loaded = load_snapshot(output)
    assert [a.id for a in loaded.advisories] == ["PYSEC-2019-1", "PYSEC-2020-5"]
    assert audit(loaded, [Installed("foo.bar", "1.9.5", editable=False)])[0].fixed == (
        "1.10",
    )


def test_snapshot_error_is_raised_for_a_non_object(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match="not a JSON object"):
        load_snapshot(write_snapshot(tmp_path / "s.json", []))


def test_scripts_audit_offline_prints_the_notice_and_the_snapshot_age() -> None:
    result = run(
        [str(REPO / "scripts" / "audit")], env={**os.environ, "AUDIT_OFFLINE": "1"}
    )
    assert result.returncode in (CLEAN, FOUND), result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("AUDIT_OFFLINE=1: auditing against the committed")
    assert re.match(r"Snapshot of 2024-10-10 \(\d+ days old\)", lines[2])
