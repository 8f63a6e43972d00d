"""Review (h11): an imapsync option that narrows which folders --delete2folders may delete must never be
dropped while the deletion itself is kept: the converted config would delete folders imapsync keeps."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.test_imapsync_import import BASE, converted, pair_of, run_cli


@pytest.mark.parametrize("narrowing", ["--delete2foldersonly", "--delete2foldersbutnot"])
@pytest.mark.parametrize("before", [True, False])
def test_folder_deletion_narrowed_by_imapsync_is_not_widened(narrowing: str, before: bool) -> None:
    options = ("--delete2", "--delete2folders")
    narrowed = (narrowing, "/^Keep/")
    conversion = converted(*(narrowed + options if before else options + narrowed))
    deletions = pair_of(conversion).get("deletions", {})
    assert deletions.get("destination") == "mirror"
    assert not deletions.get("delete_missing_folders")
    assert any(line.startswith(f"{narrowing}:") for line in conversion.unsupported), conversion.unsupported
    assert any("delete2folders" in line and "not converted" in line for line in conversion.unsupported)


# -- review h12: a dropped option that narrowed the selection never widens a deletion ----------------------


@pytest.mark.parametrize(
    "dropped",
    [
        ("--include", "^(Work"),  # a regex Python cannot read
        ("--exclude", "[Trash"),
        ("--search2", "SEEN"),
        ("--skipmess", "m/spam/"),
        ("--maxlinelength", "10000"),
        ("--justfolders",),
        ("--no-such-option",),  # unknown to the importer: it may narrow, nobody can tell
    ],
)
def test_deletions_are_not_converted_when_a_narrowing_option_was_dropped(dropped: tuple[str, ...]) -> None:
    conversion = converted("--delete1", "--delete2", "--delete2folders", *dropped)
    assert not pair_of(conversion).get("deletions")
    for option in ("--delete1", "--delete2", "--delete2folders"):
        assert any(line.startswith(f"{option}: not converted") for line in conversion.unsupported), (
            conversion.unsupported
        )


def test_deletions_stay_when_what_was_dropped_does_not_narrow_the_selection() -> None:
    conversion = converted("--delete1", "--delete2", "--syncacls")
    assert pair_of(conversion)["deletions"] == {"source": "after_copy", "destination": "mirror"}


def test_the_command_exits_78_when_something_was_not_converted_and_still_writes_the_yaml(tmp_path: Path) -> None:
    output = tmp_path / "converted.yaml"
    partial = run_cli("import", "imapsync", "-o", str(output), "--", *BASE, "--delete1", "--include", "^(Work")
    assert partial.returncode == 78, partial.stderr
    assert "not converted: --delete1" in partial.stderr
    assert "deletions" not in yaml.safe_load(output.read_text(encoding="utf-8"))["pairs"]["alice"]
    complete = run_cli("import", "imapsync", "--", *BASE, "--delete1", "--include", "^Work")
    assert complete.returncode == 0, complete.stderr
    assert "after_copy" in complete.stdout
