"""The connect commands the CLI and the console's connections page both show."""

from __future__ import annotations

import shlex

from shared.connect import commands, conninfo, libpq_params


def test_libpq_parameters_verify_the_gateway_and_quote_what_libpq_needs() -> None:
    params = libpq_params("gw.example", 8443, "pg main", "alice")
    assert conninfo(params) == (
        "host=gw.example port=8443 dbname='pg main' user=alice sslmode=verify-full "
        "sslrootcert=system"
    )
    assert conninfo({"password": "it's"}) == "password='it\\'s'"
    assert conninfo({"password": ""}) == "password=''"


def at(kind: str, connection: str) -> list[str]:
    return commands(kind, host="gw.example", port=8443, connection=connection, user="alice")


def test_commands_per_connection_type() -> None:
    psql, cli = at("postgres", "pg-main")
    assert psql == (
        'psql "host=gw.example port=8443 dbname=pg-main user=alice sslmode=verify-full '
        'sslrootcert=system"'
    )
    assert cli == "wardgate psql pg-main"
    assert at("ssh", "web-1") == [
        "ssh -p 8443 alice:web-1@gw.example",
        "wardgate ssh web-1",
    ]
    assert at("kubernetes", "k8s") == ["wardgate kube login k8s"]
    assert at("tcp", "redis") == ["wardgate tcp redis --listen 127.0.0.1:0"]
    assert at("unknown", "x") == []


def test_a_name_the_shell_would_split_is_quoted_for_it() -> None:
    (psql, cli) = commands("postgres", host="gw", port=443, connection="a b$c", user="alice")
    assert shlex.split(psql)[1] == (
        "host=gw port=443 dbname='a b$c' user=alice sslmode=verify-full sslrootcert=system"
    )
    assert shlex.split(cli) == ["wardgate", "psql", "a b$c"]
