"""bench/run.py's results files: a later run never overwrites an earlier one's, and a tree is
called dirty for changed code, not for the harness's own outputs."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from .bench_scripts import imported_bench_scripts


@pytest.fixture(scope="module")
def run() -> Iterator[ModuleType]:
    with imported_bench_scripts("run") as modules:
        yield modules["run"]


def test_the_first_run_of_a_commit_keeps_the_plain_name(run: ModuleType, tmp_path: Path) -> None:
    assert run.unused_stem("2026-12-07-fe997f5", tmp_path) == "2026-12-07-fe997f5"


def test_later_runs_of_the_same_commit_get_a_number(run: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "2026-12-07-fe997f5.json").write_text("{}")
    assert run.unused_stem("2026-12-07-fe997f5", tmp_path) == "2026-12-07-fe997f5-2"
    (tmp_path / "2026-12-07-fe997f5-2.json").write_text("{}")
    assert run.unused_stem("2026-12-07-fe997f5", tmp_path) == "2026-12-07-fe997f5-3"


def _git(repo: Path, *arguments: str) -> None:
    subprocess.run(["git", "-C", str(repo), *arguments], check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    _git(tmp_path, "init", "-q")
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "bench" / "README.md").write_text("table\n")
    (tmp_path / "edge.py").write_text("x = 1\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "one")
    return tmp_path


def test_results_and_the_readme_table_do_not_make_a_tree_dirty(
    run: ModuleType, repo: Path
) -> None:
    (repo / "bench" / "results" / "2026-12-07-abc.json").write_text("{}")
    (repo / "bench" / "README.md").write_text("a new table\n")
    commit, dirty = run.git_commit(repo)
    assert len(commit) >= 7
    assert dirty is False


@pytest.mark.parametrize("change", ["modified", "untracked"])
def test_changed_code_makes_a_tree_dirty(run: ModuleType, repo: Path, change: str) -> None:
    if change == "modified":
        (repo / "edge.py").write_text("x = 2\n")
    else:
        (repo / "bench" / "new_scenario.py").write_text("")
    assert run.git_commit(repo)[1] is True
