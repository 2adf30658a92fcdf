"""Fixtures that start real servers live in tests/fixtures/ as pytest plugins."""

from __future__ import annotations

import pytest

pytest_plugins = [
    "tests.fixtures.wardgate",  # first: the others import its helpers (wait_for, free_port)
    "tests.fixtures.postgres",
    "tests.fixtures.servers",
    "tests.fixtures.oidc",
    "tests.fixtures.sshd",
    "tests.fixtures.kube_apiserver",
]

_SHARED_SCOPES = {"class", "module", "package"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups off the items
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under `--dist loadgroup`, keep a module's tests on one worker when they share a
    module-scoped fixture (a gateway, a cluster): split across workers, each worker would start
    its own copy. Tests that share nothing are handed out one by one."""
    if not getattr(config.option, "loadgroup", False):  # set by pytest-xdist on its workers
        return
    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            continue
        info = getattr(item, "_fixtureinfo", None)  # pytest.Function's; no public accessor
        if info is None:
            continue
        if any(d.scope in _SHARED_SCOPES for defs in info.name2fixturedefs.values() for d in defs):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
