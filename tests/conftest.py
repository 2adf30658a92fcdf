"""Fixtures that start real servers live in tests/fixtures/ as pytest plugins."""

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.wardgate",
    "tests.fixtures.servers",
    "tests.fixtures.oidc",
    "tests.fixtures.sshd",
    "tests.fixtures.kube_apiserver",
]
