"""Review (h11): an imapsync option that narrows which folders --delete2folders may delete must never be
dropped while the deletion itself is kept: the converted config would delete folders imapsync keeps."""

from __future__ import annotations

import pytest

from tests.test_imapsync_import import converted, pair_of


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
