"""Kubernetes approvals end to end: `effect: review` rules hold a request for approval by
another person, through the same review service as PostgreSQL.

The real `kubectl` through gateway and agent processes to the kube-apiserver TEST DOUBLE
(tests/fixtures/kube_apiserver.py); votes are cast with the real `wardgate reviews` CLI.
Local users sign in with password + TOTP: alice (dev) works on the cluster, bob and carol
(ops) approve. Each test runs its own command, so the reviews of one never approve another's.
"""

from __future__ import annotations

import re
import subprocess
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.crypto import SecretBox
from tests.fixtures.kube_apiserver import KubeApiServerDouble, connect_and_log_in, running_double
from tests.fixtures.wardgate import GatewayProc, Wardgate, wait_for

pytestmark = pytest.mark.e2e

KUBECTL = "/usr/bin/kubectl"
REVIEW_ID = re.compile(r"rv_[0-9a-f]{12}")
OPS = {"approvers": {"groups": ["ops"]}, "timeout": 120}

KUBE_POLICY = {
    "rules": [
        {
            "name": "exec-needs-a-second-person",
            "effect": "review",
            "message": "exec needs a second person",
            "match": {"subresources": ["exec"], "namespaces": ["default"]},
            "review": OPS,
        },
        {
            "name": "prod-exec-waits",
            "effect": "review",
            "wait": True,
            "match": {"subresources": ["exec"], "namespaces": ["prod"]},
            "review": OPS,
        },
        {
            "name": "prod-delete-waits",
            "effect": "review",
            "wait": True,
            "match": {"verbs": ["delete"], "namespaces": ["prod"]},
            "review": OPS,
        },
    ]
}
ROLES = [
    {
        "name": "k8s-users",
        "groups": ["dev", "ops"],
        "grants": [{"connection": "k8s", "access": "read-write"}],
    }
]


@dataclass
class Stack:
    wg: Wardgate
    gw: GatewayProc
    double: KubeApiServerDouble
    kubeconfig: Path
    tokens: dict[str, str]

    def kubectl(self, user: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [KUBECTL, *args], env=self.env(user), capture_output=True, text=True, timeout=60,
            check=False,
        )  # fmt: skip

    def env(self, user: str) -> dict[str, str]:
        env = self.gw.client_env(self.tokens[user])
        env.update(KUBECONFIG=str(self.kubeconfig), HOME=str(self.kubeconfig.parent))
        return env

    def cli(self, user: str, *args: str) -> subprocess.CompletedProcess[str]:
        return self.wg.cli(self.gw, *args, token=self.tokens[user])

    def reviews_of(self, requester: str, text: str) -> list[dict[str, Any]]:
        with self.gw.api() as api:
            r = api.get("/v1/reviews")
            r.raise_for_status()
        return [x for x in r.json() if x["requester"] == requester and x["text"] == text]

    def ran(self, command: list[str]) -> bool:
        """Whether the cluster (the double) was asked to run this command."""
        wanted = [("command", c) for c in command]
        for r in self.double.requests_to("/exec"):
            query = urllib.parse.parse_qsl(r["query"])
            if [q for q in query if q[0] == "command"] == wanted:
                return True
        return False


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("kube-reviews")
    # The double first, so it is stopped last: after the agent's pooled connections to it.
    with running_double(tmp) as double:
        wg = Wardgate(tmp)
        try:
            gw = wg.gateway(
                kubernetes=KUBE_POLICY,
                roles=ROLES,
                identity={"local_users": True},
                secret_key=SecretBox.generate_key(),
                reviews={"poll_interval": 0.5},
            )
            wg.agent(gw, gw.create_agent("default"), wait="default")
            kubeconfig = connect_and_log_in(wg, gw, double, tmp)
            tokens = {
                "alice": gw.local_login("alice", ["dev"]),
                "bob": gw.local_login("bob", ["ops"]),
                "carol": gw.local_login("carol", ["ops"]),
            }
            yield Stack(wg, gw, double, kubeconfig, tokens)
        finally:
            wg.close()


def _kubectl(stack: Stack, user: str, *args: str, spdy: bool = False) -> subprocess.Popen[str]:
    """kubectl running as `user`; `spdy`: exec over a plain SPDY upgrade only (no WebSocket)."""
    env = {**stack.env(user), **({"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false"} if spdy else {})}
    return subprocess.Popen(
        [KUBECTL, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_held_exec_approved_by_another_user_then_run_again(stack: Stack) -> None:
    command = ["echo", "approved", "run"]
    text = "exec pod/web-1 -n default -c app -- echo approved run"
    held = stack.kubectl("alice", "exec", "web-1", "--", *command)
    assert held.returncode != 0
    assert "Forbidden" in held.stderr, held.stderr
    found = REVIEW_ID.search(held.stderr)
    assert found, held.stderr
    review_id = found.group(0)
    assert f"wardgate reviews approve {review_id}" in held.stderr
    assert not stack.ran(command)
    # kubectl retries a refused WebSocket exec over SPDY, and the user may run it again
    # while it is pending: still the one review.
    again = stack.kubectl("alice", "exec", "web-1", "--", *command)
    assert again.returncode != 0 and review_id in again.stderr, again.stderr
    assert [r["id"] for r in stack.reviews_of("alice", text)] == [review_id]

    shown = stack.cli("bob", "reviews", "show", review_id)
    assert text in shown.stdout, shown
    approved = stack.cli("bob", "reviews", "approve", review_id, "--reason", "fine")
    assert approved.returncode == 0, approved.stderr

    out = stack.kubectl("alice", "exec", "web-1", "--", *command)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "approved run\n"
    assert stack.ran(command)
    # The approval is alice's: the same command by someone else is held anew.
    other = stack.kubectl("carol", "exec", "web-1", "--", *command)
    assert other.returncode != 0 and REVIEW_ID.search(other.stderr), other.stderr
    assert review_id not in other.stderr

    events = [e for e in stack.gw.audit() if e["data"].get("review") == review_id]
    kinds = [e["kind"] for e in events]
    assert (
        kinds.index("review.created") < kinds.index("review.vote") < kinds.index("review.approved")
    )
    # The review belongs to the session of the request that asked for it.
    created = next(e for e in events if e["kind"] == "review.created")
    asked = [e for e in stack.gw.audit("k8s.request") if e["session"] == created["session"]]
    assert [e["data"]["decision"] for e in asked] == ["review"]
    passed = [e["data"] for e in events if e["kind"] == "k8s.request"]
    assert passed[-1]["decision"] == "allow" and passed[-1]["command"] == command


def test_denied_exec_is_still_refused(stack: Stack) -> None:
    command = ["echo", "denied", "run"]
    held = stack.kubectl("alice", "exec", "web-1", "--", *command)
    found = REVIEW_ID.search(held.stderr)
    assert held.returncode != 0 and found, held.stderr
    denied = stack.cli("carol", "reviews", "deny", found.group(0), "--reason", "no")
    assert denied.returncode == 0, denied.stderr
    again = stack.kubectl("alice", "exec", "web-1", "--", *command)
    assert again.returncode != 0
    assert "Forbidden" in again.stderr and REVIEW_ID.search(again.stderr), again.stderr
    assert not stack.ran(command)


def test_nobody_approves_their_own_exec(stack: Stack) -> None:
    command = ["echo", "self", "approved"]
    held = stack.kubectl("bob", "exec", "web-1", "--", *command)
    found = REVIEW_ID.search(held.stderr)
    assert held.returncode != 0 and found, held.stderr
    review_id = found.group(0)
    own = stack.cli("bob", "reviews", "approve", review_id)
    assert own.returncode != 0
    assert "nobody reviews their own request" in own.stderr + own.stdout
    # alice is no approver of this rule (group ops) either.
    dev = stack.cli("alice", "reviews", "approve", review_id)
    assert dev.returncode != 0
    assert "may not review" in dev.stderr + dev.stdout
    again = stack.kubectl("bob", "exec", "web-1", "--", *command)
    assert again.returncode != 0 and review_id in again.stderr, again.stderr
    assert not stack.ran(command)
    refused = [e for e in stack.gw.audit("review.vote_refused") if e["data"]["review"] == review_id]
    assert [e["actor"] for e in refused] == ["bob", "alice"]


def test_a_wait_rule_holds_kubectl_until_approved(stack: Stack) -> None:
    command = ["sh", "-c", "exit 4"]
    text = "exec pod/api-1 -n prod -c app -- sh -c 'exit 4'"
    waiting = _kubectl(stack, "alice", "exec", "api-1", "-n", "prod", "--", *command)
    try:
        pending = wait_for(lambda: stack.reviews_of("alice", text), "the held exec's review")
        assert pending[0]["status"] == "pending"
        assert waiting.poll() is None
        assert not stack.ran(command)
        approved = stack.cli("carol", "reviews", "approve", pending[0]["id"])
        assert approved.returncode == 0, approved.stderr
        _, err = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert waiting.returncode == 4, err  # the exit status of the command in the pod
    assert stack.ran(command)


def test_a_wait_rule_refuses_when_denied(stack: Stack) -> None:
    command = ["echo", "waits", "for", "nothing"]
    text = "exec pod/api-1 -n prod -c app -- echo waits for nothing"
    waiting = _kubectl(stack, "alice", "exec", "api-1", "-n", "prod", "--", *command)
    try:
        pending = wait_for(lambda: stack.reviews_of("alice", text), "the held exec's review")
        review_id = pending[0]["id"]
        denied = stack.cli("bob", "reviews", "deny", review_id, "--reason", "not now")
        assert denied.returncode == 0, denied.stderr
        _, err = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert waiting.returncode != 0
    assert f"review {review_id}" in err and "was denied" in err, err
    # kubectl's SPDY retry of the refused WebSocket got the same answer, no new review.
    assert [r["id"] for r in stack.reviews_of("alice", text)] == [review_id]
    assert not stack.ran(command)


def test_a_kubectl_that_leaves_while_held_withdraws_its_review(stack: Stack) -> None:
    command = ["echo", "left", "early"]
    text = "exec pod/api-1 -n prod -c app -- echo left early"
    waiting = _kubectl(stack, "alice", "exec", "api-1", "-n", "prod", "--", *command)
    try:
        pending = wait_for(lambda: stack.reviews_of("alice", text), "the held exec's review")
    finally:
        waiting.kill()
        waiting.communicate()
    review_id = pending[0]["id"]
    wait_for(
        lambda: stack.reviews_of("alice", text)[0]["status"] == "cancelled",
        "the review to be withdrawn",
    )
    late = stack.cli("bob", "reviews", "approve", review_id)
    assert late.returncode != 0 and "already cancelled" in late.stderr + late.stdout
    assert not stack.ran(command)


def test_a_held_delete_waits_over_http2_and_a_leaving_kubectl_withdraws(stack: Stack) -> None:
    """The plain HTTP path (kubectl speaks HTTP/2 to the gateway): a wait rule on delete."""
    for name in ("tmp-1", "tmp-2"):
        stack.double.add_pod("prod", name)
    deleting = _kubectl(stack, "alice", "delete", "pod", "tmp-1", "-n", "prod", "--wait=false")
    try:
        pending = wait_for(
            lambda: stack.reviews_of("alice", "delete pods/tmp-1 -n prod"), "the held delete"
        )
        assert deleting.poll() is None and ("prod", "tmp-1") in stack.double.pods
        approved = stack.cli("bob", "reviews", "approve", pending[0]["id"])
        assert approved.returncode == 0, approved.stderr
        out, err = deleting.communicate(timeout=60)
    finally:
        if deleting.poll() is None:
            deleting.kill()
            deleting.wait()
    assert deleting.returncode == 0, err
    assert "deleted" in out and ("prod", "tmp-1") not in stack.double.pods

    leaving = _kubectl(stack, "alice", "delete", "pod", "tmp-2", "-n", "prod", "--wait=false")
    try:
        wait_for(lambda: stack.reviews_of("alice", "delete pods/tmp-2 -n prod"), "the review")
    finally:
        leaving.kill()
        leaving.communicate()
    wait_for(
        lambda: stack.reviews_of("alice", "delete pods/tmp-2 -n prod")[0]["status"] == "cancelled",
        "the review to be withdrawn",
    )
    assert ("prod", "tmp-2") in stack.double.pods


def test_a_wait_rule_holds_a_spdy_exec_until_approved(stack: Stack) -> None:
    command = ["sh", "-c", "exit 6"]
    text = "exec pod/api-1 -n prod -c app -- sh -c 'exit 6'"
    waiting = _kubectl(stack, "alice", "exec", "api-1", "-n", "prod", "--", *command, spdy=True)
    try:
        pending = wait_for(lambda: stack.reviews_of("alice", text), "the held exec's review")
        assert waiting.poll() is None
        assert not stack.ran(command)
        approved = stack.cli("bob", "reviews", "approve", pending[0]["id"])
        assert approved.returncode == 0, approved.stderr
        _, err = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert waiting.returncode == 6, err
    assert [r["method"] for r in stack.double.requests_to("/exec") if "exit+6" in r["query"]] == [
        "POST"
    ]


def test_a_spdy_exec_that_leaves_while_held_withdraws_its_review(stack: Stack) -> None:
    command = ["echo", "spdy", "left"]
    text = "exec pod/api-1 -n prod -c app -- echo spdy left"
    waiting = _kubectl(stack, "alice", "exec", "api-1", "-n", "prod", "--", *command, spdy=True)
    try:
        pending = wait_for(lambda: stack.reviews_of("alice", text), "the held exec's review")
    finally:
        waiting.kill()
        waiting.communicate()
    wait_for(
        lambda: stack.reviews_of("alice", text)[0]["status"] == "cancelled",
        "the review to be withdrawn",
    )
    assert pending[0]["status"] == "pending"
    assert not stack.ran(command)
