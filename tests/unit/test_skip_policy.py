"""The rule of tests/conftest.py, on a suite of its own run by a real pytest: an undeclared skip
fails the run and is named; a skip declared with may_skip("why") passes and is listed with its why."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]

SUITE = '''
import pytest

@pytest.fixture
def no_tool():
    pytest.skip("the tool is not installed")

def test_passes():
    pass

def test_skips_in_its_body():
    pytest.skip("not today")

@pytest.mark.skipif(True, reason="a condition")
def test_skipped_by_a_marker():
    pass

def test_skipped_by_a_fixture(no_tool):
    pass

@pytest.mark.may_skip("")
def test_declared_without_a_why():
    pytest.skip("an empty why")

@pytest.mark.may_skip("the engine runs in make compose-test, never in CI")
def test_declared():
    pytest.skip("no engine here")

@pytest.mark.xfail(reason="a known bug", strict=True)
def test_expected_to_fail():
    assert False
'''


def run_suite(tmp_path: Path, files: dict[str, str]) -> subprocess.CompletedProcess:
    shutil.copy(PROJECT / "tests" / "conftest.py", tmp_path / "conftest.py")
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--strict-markers", "-q", "-rA",
                           str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_undeclared_skips_fail_and_declared_ones_are_listed_with_their_why(tmp_path):
    done = run_suite(tmp_path, {"test_suite.py": SUITE})

    assert done.returncode == 1, done.stdout
    summary = done.stdout.strip().splitlines()[-1]
    # Four undeclared: in the body and the empty why (failed), the marker and the fixture (errors in setup).
    assert "2 failed, 1 passed, 1 skipped, 1 xfailed, 2 errors" in summary, done.stdout
    undeclared = done.stdout.split("undeclared skips, counted as failures")[1]
    for test, reason in (("test_skips_in_its_body", "not today"), ("test_skipped_by_a_marker", "a condition"),
                         ("test_skipped_by_a_fixture", "the tool is not installed"),
                         ("test_declared_without_a_why", "an empty why")):
        assert f"test_suite.py::{test}: {reason}" in undeclared, done.stdout
    assert "test_declared:" not in undeclared
    declared = done.stdout.split("declared skips")[1]
    assert "test_suite.py::test_declared: no engine here (declared: the engine runs in make compose-test" in declared


def test_a_module_skipped_whole_fails_the_run(tmp_path):
    done = run_suite(tmp_path, {"test_gone.py": 'import pytest\npytest.importorskip("no_such_module_here")\n'
                                                "def test_never():\n    pass\n"})
    assert done.returncode != 0, done.stdout
    assert "undeclared skip of a whole module" in done.stdout and "no_such_module_here" in done.stdout, done.stdout


def test_a_suite_without_skips_passes(tmp_path):
    done = run_suite(tmp_path, {"test_fine.py": "def test_one():\n    pass\n"})
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout
