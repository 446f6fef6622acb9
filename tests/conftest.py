"""What holds for every tier: a skip must be declared.

A test that skips passes silently, so a check that never runs in CI (a tool missing there, a
service not started) looks the same as one that passed. Here a skip is allowed only on a test
marked `@pytest.mark.may_skip("why it may skip, and where it does run")`; any other skip (a
`pytest.skip` in a test or fixture, a `skipif` marker, `importorskip`) is reported as a failure
that names the test and the skip's reason, and pytest exits non-zero. Declared skips are listed
at the end of the run with their explanations.

This file uses nothing but pytest, so that tests/unit/test_skip_policy.py can run it on a suite
of its own.
"""

from __future__ import annotations

import pytest

DECLARED = pytest.StashKey[list]()  # (test id, skip reason, declared why) of each declared skip
UNDECLARED = pytest.StashKey[list]()  # (test id or collected path, skip reason) of each undeclared one


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "may_skip(why): the test may skip; `why` says when and where it runs instead (tests/conftest.py)")
    config.stash[DECLARED] = []
    config.stash[UNDECLARED] = []


def skip_reason(report) -> str:
    """The reason a skipped report gives (its longrepr is (file, line, "Skipped: reason"))."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def declared_why(item) -> str | None:
    marker = item.get_closest_marker("may_skip")
    if marker is None:
        return None
    why = (marker.args[0] if marker.args else marker.kwargs.get("why", "")) or ""
    return why.strip() or None  # a declaration without an explanation declares nothing


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail"):  # an expected failure is no skip
        return
    reason = skip_reason(report)
    why = declared_why(item)
    if why is not None:
        item.config.stash[DECLARED].append((item.nodeid, reason, why))
        return
    item.config.stash[UNDECLARED].append((item.nodeid, reason))
    report.outcome = "failed"
    report.longrepr = (f"undeclared skip ({reason}): a test may skip only when marked "
                       f'@pytest.mark.may_skip("why"), which says why and where it runs instead (tests/conftest.py)')


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A whole module skipped at collection (pytest.skip(allow_module_level=True), importorskip)
    hides every test in it: always an error, since no marker can declare it."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped:
        reason = skip_reason(report)
        collector.config.stash[UNDECLARED].append((report.nodeid, reason))
        report.outcome = "failed"
        report.longrepr = (f"undeclared skip of a whole module ({reason}): skip single tests, each marked "
                           f'@pytest.mark.may_skip("why") (tests/conftest.py)')


def pytest_terminal_summary(terminalreporter, config):
    declared, undeclared = config.stash[DECLARED], config.stash[UNDECLARED]
    if declared:
        terminalreporter.section("declared skips")
        for nodeid, reason, why in declared:
            terminalreporter.line(f"{nodeid}: {reason} (declared: {why})")
    if undeclared:
        terminalreporter.section("undeclared skips, counted as failures")
        for nodeid, reason in undeclared:
            terminalreporter.line(f"{nodeid}: {reason}")
