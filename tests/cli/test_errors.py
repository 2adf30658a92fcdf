"""Mistakes a user makes before any gateway answers: each is one or two lines saying what is
wrong and what to do, an exit status (1 at run time, 2 for a usage mistake), no traceback,
and `--debug` (or WARDGATE_DEBUG=1) shows the traceback."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.wardgate import WARDGATE, free_port


def wardgate(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("WARDGATE_") and k not in ("XDG_CONFIG_HOME",)
    }
    environ.update(env)
    return subprocess.run(
        [*WARDGATE, *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def short_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The error text, after checking it is short, traceback-free and exits with `code`."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    # Servers log as they start; the error is what follows "Error:".
    error = result.stderr[result.stderr.index("Error: ") :]
    lines = [line for line in error.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 2, result.stderr
    return error


@pytest.fixture
def config_dir(tmp_path: Path) -> dict[str, str]:
    """An empty CLI config dir, so no stored sign-in is used."""
    return {"WARDGATE_CONFIG_DIR": str(tmp_path / "config"), "WARDGATE_TOKEN": "wgt_x"}


def test_gateway_down_names_the_url_and_what_to_check(config_dir: dict[str, str]) -> None:
    url = f"https://127.0.0.1:{free_port()}"
    err = short_error(wardgate("whoami", WARDGATE_URL=url, **config_dir), 1)
    assert f"cannot reach the gateway at {url} (connection refused)" in err
    assert "check WARDGATE_URL (or --gateway) and that the gateway is running" in err


def test_debug_shows_the_traceback(config_dir: dict[str, str]) -> None:
    url = f"https://127.0.0.1:{free_port()}"
    flag = wardgate("--debug", "whoami", WARDGATE_URL=url, **config_dir)
    assert flag.returncode == 1 and "Traceback" in flag.stderr and "ConnectError" in flag.stderr
    env = wardgate("whoami", WARDGATE_URL=url, WARDGATE_DEBUG="1", **config_dir)
    assert env.returncode == 1 and "Traceback" in env.stderr


def test_url_without_scheme_says_to_write_https(config_dir: dict[str, str]) -> None:
    err = short_error(wardgate("whoami", WARDGATE_URL="127.0.0.1:8443", **config_dir), 2)
    assert "gateway URL '127.0.0.1:8443' has no scheme: write https://127.0.0.1:8443" in err
    err = short_error(wardgate("whoami", "--gateway", "localhost:8443", **config_dir), 2)
    assert "write https://localhost:8443" in err


def test_ca_file_missing_or_not_a_certificate(tmp_path: Path, config_dir: dict[str, str]) -> None:
    url = f"https://127.0.0.1:{free_port()}"
    missing = tmp_path / "nope" / "ca.pem"
    err = short_error(
        wardgate("whoami", WARDGATE_URL=url, WARDGATE_CA=str(missing), **config_dir), 2
    )
    assert f"CA file {missing} (WARDGATE_CA or --ca) does not exist" in err
    assert "tls/ca.pem in its data dir" in err
    not_pem = tmp_path / "env"
    not_pem.write_text("export WARDGATE_URL=https://127.0.0.1:8443\n")
    err = short_error(wardgate("whoami", "--gateway", url, "--ca", str(not_pem), **config_dir), 2)
    assert f"CA file {not_pem} (WARDGATE_CA or --ca) holds no PEM certificate" in err


def test_yaml_syntax_error_in_apply_names_file_line_and_column(
    tmp_path: Path, config_dir: dict[str, str]
) -> None:
    spec = tmp_path / "conns.yaml"
    spec.write_text("connections:\n  - name: a\n    host: [unclosed\n")
    err = short_error(wardgate("apply", "-f", str(spec), **config_dir), 2)
    assert f"{spec}, line 4, column 1:" in err and "YAML syntax error" in err


@pytest.mark.parametrize("command", ["gateway", "dev"])
def test_yaml_syntax_error_in_the_gateway_config(tmp_path: Path, command: str) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("listen: 127.0.0.1:9443\n  agent_listen: x\n")
    err = short_error(
        wardgate(command, "--config", str(config), "--data-dir", str(tmp_path / "d")), 2
    )
    assert f"{config}, line 2, column 15:" in err and "YAML syntax error" in err


def test_typo_in_the_gateway_config_names_key_file_and_suggestion(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("listn: 127.0.0.1:9443\n")
    err = short_error(wardgate("gateway", "--config", str(config)), 2)
    assert f"{config}: unknown key 'listn' (did you mean 'listen'?)" in err
    config.write_text("identity:\n  credentials:\n    tll: 60\n")
    err = short_error(wardgate("gateway", "--config", str(config)), 2)
    assert "unknown key 'identity.credentials.tll' (did you mean 'ttl'?)" in err
    config.write_text("identity:\n  credentials:\n    ttl: -5\n")
    err = short_error(wardgate("gateway", "--config", str(config)), 2)
    assert f"{config}: identity.credentials.ttl: Input should be greater than 0" in err


def test_local_users_without_a_secret_key_is_a_configuration_error(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    port, agents = free_port(), free_port()
    config.write_text(
        f"listen: 127.0.0.1:{port}\nagent_listen: 127.0.0.1:{agents}\n"
        "identity:\n  local_users: true\n"
    )
    err = short_error(
        wardgate("gateway", "--config", str(config), "--data-dir", str(tmp_path / "d")), 2
    )
    assert "identity.local_users needs secret_key (or WARDGATE_SECRET_KEY)" in err


def test_bad_listen_flag_is_named(tmp_path: Path) -> None:
    err = short_error(wardgate("gateway", "--listen", "nowhere", "--data-dir", str(tmp_path)), 2)
    assert "--listen: address 'nowhere' is not HOST:PORT" in err


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


@pytest.mark.parametrize("command", ["gateway", "dev"])
def test_servers_name_the_address_in_use(tmp_path: Path, busy_port: int, command: str) -> None:
    err = short_error(
        wardgate(
            command,
            "--listen",
            f"127.0.0.1:{busy_port}",
            "--agent-listen",
            f"127.0.0.1:{free_port()}",
            "--data-dir",
            str(tmp_path / "data"),
        ),
        1,
    )
    assert f"cannot listen on 127.0.0.1:{busy_port}: the address is already in use" in err
    assert "pass --listen HOST:PORT with a free port" in err


def test_agent_port_in_use_is_named_too(tmp_path: Path, busy_port: int) -> None:
    err = short_error(
        wardgate(
            "gateway",
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--agent-listen",
            f"127.0.0.1:{busy_port}",
            "--data-dir",
            str(tmp_path / "data"),
        ),
        1,
    )
    assert f"cannot listen on 127.0.0.1:{busy_port}: the address is already in use" in err
    assert "pass --agent-listen HOST:PORT with a free port" in err


def test_password_rule_is_said_in_the_prompt_and_checked_at_once(
    config_dir: dict[str, str],
) -> None:
    url = f"https://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [*WARDGATE, "user", "create", "bob"],
        input="too short\na long enough password\na long enough password\n",
        env={**os.environ, "WARDGATE_URL": url, **config_dir},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    out = result.stdout + result.stderr
    assert "password (at least 12 characters):" in out
    rule = out.index("Error: passwords have at least 12 characters")
    # Said after the first entry, then asked again; the confirmation comes only after.
    assert rule < out.index("password (at least 12 characters):", rule)
    assert rule < out.index("Repeat for confirmation")
    assert "Traceback" not in out


def test_a_malformed_admin_token_in_the_environment_is_refused_at_start(tmp_path: Path) -> None:
    listen = f"--listen=127.0.0.1:{free_port()}"
    agents = f"--agent-listen=127.0.0.1:{free_port()}"
    result = wardgate(
        "gateway",
        listen,
        agents,
        "--data-dir",
        str(tmp_path),
        WARDGATE_ADMIN_TOKEN="hunter2hunter2",
    )
    err = short_error(result, 2)
    assert "WARDGATE_ADMIN_TOKEN) must be wgt_ followed by 32 to 250 printable" in err
    assert "hunter2" not in result.stderr + result.stdout
