"""Fixtures that start real servers live in tests/fixtures/ as pytest plugins."""

pytest_plugins = [
    "tests.fixtures.wardgate",  # first: the others import its helpers (wait_for, free_port)
    "tests.fixtures.postgres",
    "tests.fixtures.servers",
    "tests.fixtures.oidc",
    "tests.fixtures.sshd",
    "tests.fixtures.kube_apiserver",
]
