"""The README's quickstart, run as written, so the README cannot drift from the product.

The test reads README.md's quickstart section and runs its ```sh blocks in order, in one
bash, against a real PostgreSQL and a real sshd. It substitutes only what a reader supplies
(the *_TARGET variables naming their own servers, exported as the README asks) and what
cannot be literal on a shared machine:

- `make dev` (whose recipe must stay `.venv/bin/wardgate dev`, checked here) runs as
  `wardgate dev` on free ports, in the directory the other blocks run in;
- a background line (`CMD &   # prints "TEXT" ...`) sends its output to a log, and the
  script waits for TEXT there, as a reader waits to see it before typing on.

PATH is stripped of the directory holding `wardgate`: `source .wardgate/env` must bring it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.postgres import PostgresServer
from tests.fixtures.sshd import Sshd
from tests.fixtures.wardgate import WARDGATE, GatewayProc, free_port, wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BACKGROUND = re.compile(r'^(?P<cmd>.*\S)\s+&\s+#.*\bprints "(?P<text>[^"]+)"')
WAIT_FOR_OUTPUT = """
wait_for_output() {  # LOG TEXT PID: until TEXT is in LOG, with a deadline; fail if PID exits
  local deadline=$((SECONDS + 30))
  until grep -qF -- "$2" "$1"; do
    if ! kill -0 "$3" 2>/dev/null || ((SECONDS >= deadline)); then
      echo "quickstart test: no '$2' from the background command:" >&2
      cat "$1" >&2
      return 1
    fi
    sleep 0.1
  done
}
"""


def quickstart_blocks(readme: str) -> list[str]:
    """The ```sh blocks of the README's `## Quickstart` section, in order."""
    match = re.search(r"^## Quickstart.*?(?=^## )", readme, re.M | re.S)
    assert match, "README.md has no '## Quickstart' section"
    return re.findall(r"^```sh\n(.*?)^```$", match.group(0), re.M | re.S)


def script(blocks: list[str]) -> str:
    """The blocks as one bash script, background lines waited on (see the module docstring)."""
    lines = ["set -euo pipefail", WAIT_FOR_OUTPUT]
    for n, line in enumerate("".join(blocks).splitlines()):
        bg = BACKGROUND.match(line)
        if re.search(r"[^&]&\s*(#.*)?$", line) and not bg:
            raise AssertionError(f"a background line says what it prints when ready: {line!r}")
        if bg:
            log = f"background-{n}.log"
            lines.append(f"{bg['cmd']} >{log} 2>&1 &")
            lines.append(f'wait_for_output {log} {shlex.quote(bg["text"])} "$!"')
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


def without_wardgate(path: str) -> str:
    """PATH without the directories that hold a `wardgate` executable."""
    return os.pathsep.join(
        d for d in path.split(os.pathsep) if d and not (Path(d) / "wardgate").exists()
    )


def test_readme_quickstart_runs_as_written(
    tmp_path: Path, postgres_db: PostgresServer, sshd: Sshd
) -> None:
    blocks = quickstart_blocks((ROOT / "README.md").read_text())
    assert blocks[0] == "make dev\n", "the quickstart starts with `make dev`"
    recipe = re.search(r"^dev:.*\n\t(.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert recipe and recipe.group(1).strip() == ".venv/bin/wardgate dev"

    work = tmp_path / "work"
    work.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("WARDGATE_", "PG")) and k != "XDG_CONFIG_HOME"
    }
    env.update(PYTHONUNBUFFERED="1", HOME=str(tmp_path / "home"))
    (tmp_path / "home").mkdir()

    public, agent = free_port(), free_port()
    dev = GatewayProc(
        [
            *WARDGATE,
            "dev",
            "--data-dir",
            str(work / ".wardgate"),  # the default, ./.wardgate, where the blocks run
            "--listen",
            f"127.0.0.1:{public}",
            "--agent-listen",
            f"127.0.0.1:{agent}",
        ],
        tmp_path / "dev.log",
        env,
        data_dir=work / ".wardgate",
        public_port=public,
        agent_port=agent,
    ).start()
    shell: subprocess.Popen[str] | None = None
    try:
        env_file = work / ".wardgate" / "env"
        token = wait_for(
            lambda: re.search(r"WARDGATE_TOKEN=(\S+)", env_file.read_text()),
            "make dev to write .wardgate/env",
        ).group(1)
        dev.token = token
        dev.wait_ready()
        dev.wait_agent("default")

        env.update(
            PATH=without_wardgate(env["PATH"]),
            PGHOST_TARGET=postgres_db.host,
            PGPORT_TARGET=str(postgres_db.port),
            PGUSER_TARGET=postgres_db.user,
            PGPASSWORD_TARGET=postgres_db.password,
            PGDATABASE_TARGET=postgres_db.dbname,
            SSH_HOST_TARGET="127.0.0.1",
            SSH_PORT_TARGET=str(sshd.port),
            SSH_USER_TARGET=sshd.user,
            SSH_KEY_TARGET=str(sshd.client_key),
        )
        assert shutil.which("wardgate", path=env["PATH"]) is None
        (work / "quickstart.sh").write_text(script(blocks[1:]))
        shell = subprocess.Popen(
            ["bash", "quickstart.sh"],
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        out, _ = shell.communicate(timeout=240)
        assert shell.returncode == 0, f"{out}\n--- wardgate dev:\n{dev.log()}"

        assert "admin" in out  # wardgate whoami
        assert "hello over ssh" in out  # wardgate ssh
        assert "hello through wardgate" in out  # psql through wardgate tcp reads the row
        assert re.search(r"ERROR: .*schema changes need a change ticket", out)  # psql's refusal
        assert "refused by policy no-ddl" in out
        with postgres_db.connect() as conn:  # the refused DROP never reached the server
            assert conn.execute("select body from notes").fetchall() == [
                ("hello through wardgate",)
            ]
        statements = [e["data"].get("text", "") for e in dev.audit("pg.statement")]
        assert any("insert into notes" in text for text in statements), statements
        assert any("echo hello over ssh" in str(e["data"]) for e in dev.audit("ssh.exec"))
    finally:
        if shell is not None:
            # The script's background commands share its process group, also after it exits.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(shell.pid, signal.SIGTERM)
            shell.wait(15)
        dev.stop()
