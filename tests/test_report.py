"""The report's folder: what a previous report wrote and this one did not goes, a user's own files stay."""

from __future__ import annotations

import json

from harness.analysis.report import REPORT_FILES, replace_previous


def test_a_table_the_new_report_no_longer_has_is_removed_and_nothing_else(tmp_path):
    for name in ("README.md", "hashing_attacks.csv", "hashing_attacks.md", "robustness.png", "my-notes.txt"):
        (tmp_path / name).write_text("x")
    (tmp_path / REPORT_FILES).write_text(json.dumps(["README.md", "hashing_attacks.csv", "hashing_attacks.md",
                                                     "robustness.png", "../outside.txt", ""]))
    (tmp_path.parent / "outside.txt").write_text("a file of the user's beside the folder")
    replace_previous(tmp_path, {"README.md", "robustness.png"})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([REPORT_FILES, "README.md", "my-notes.txt",
                                                                 "robustness.png"])
    assert (tmp_path.parent / "outside.txt").is_file(), "a listed path outside the folder is never touched"
    assert json.loads((tmp_path / REPORT_FILES).read_text()) == ["README.md", "robustness.png"]


def test_a_first_report_or_a_damaged_list_removes_nothing(tmp_path):
    (tmp_path / "clean.csv").write_text("x")
    replace_previous(tmp_path, {"README.md"})  # no list yet: a folder from before lists were kept
    (tmp_path / REPORT_FILES).write_text("{not json")
    replace_previous(tmp_path, {"README.md"})
    assert (tmp_path / "clean.csv").is_file()
    assert json.loads((tmp_path / REPORT_FILES).read_text()) == ["README.md"]
