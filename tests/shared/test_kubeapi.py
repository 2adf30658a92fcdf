"""shared/kubeapi.py: the head codec, request attributes and masking, without sockets."""

from __future__ import annotations

import base64
import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.kubeapi import (
    MASKED,
    MASKED_B64,
    WS_BINARY,
    WS_CLOSE,
    ExecRecorder,
    HeadError,
    Masker,
    RequestHead,
    RequestInfo,
    ResponseHead,
    decode_head,
    decode_ws,
    encode_head,
    encode_response_head,
    encode_ws,
    encode_ws_close,
    forwardable,
    parse_upgrade,
    request_info,
    status_body,
)

text = st.text(max_size=40)
pairs = st.lists(st.tuples(text, text), max_size=5).map(tuple)


@given(
    method=st.sampled_from(["GET", "POST", "DELETE"]),
    path=text.map(lambda s: "/" + s),
    query=text,
    headers=pairs,
    protocols=st.lists(text, max_size=3).map(tuple),
    user=st.none() | text,
    groups=st.lists(text, max_size=3).map(tuple),
    secrets=st.booleans(),
    env=st.lists(text, max_size=3).map(tuple),
)
def test_request_heads_round_trip(
    method: str, path: str, query: str, headers: Any, protocols: Any, user: str | None,
    groups: Any, secrets: bool, env: Any,
) -> None:  # fmt: skip
    head = RequestHead(method, path, query, headers, protocols, user, groups, secrets, env)
    assert decode_head(encode_head(head)) == head


@given(status=st.integers(100, 599), headers=pairs, proto=st.none() | text, masked=st.integers(0))
def test_response_heads_round_trip(
    status: int, headers: Any, proto: str | None, masked: int
) -> None:
    head = ResponseHead(status, headers, proto, masked)
    assert decode_head(encode_head(head)) == head


@given(st.binary(max_size=200))
def test_garbage_is_a_head_error_never_a_crash(data: bytes) -> None:
    with contextlib.suppress(HeadError):
        decode_head(data)


@pytest.mark.parametrize(
    "doc",
    [
        {"request": {"method": "GET"}},
        {"request": {"method": "GET", "path": "no-slash", "query": "", "headers": [],
                     "websocket_protocols": [], "impersonate_user": None,
                     "impersonate_groups": [], "mask_secrets": False, "mask_env": []}},
        {"response": {"status": 99, "headers": [], "websocket_protocol": None, "masked": 0}},
        {"response": {"status": 200, "headers": [["a"]], "websocket_protocol": None, "masked": 0}},
        {"response": {"status": 200, "headers": [], "websocket_protocol": None, "masked": -1}},
        {"other": 1},
        [],
    ],
)  # fmt: skip
def test_malformed_heads_are_refused(doc: Any) -> None:
    body = json.dumps(doc).encode()
    with pytest.raises(HeadError):
        decode_head(len(body).to_bytes(4, "big") + body)


def test_a_head_whose_length_disagrees_is_refused() -> None:
    frame = encode_head(ResponseHead(200))
    with pytest.raises(HeadError):
        decode_head(frame + b"x")


def test_websocket_messages() -> None:
    assert decode_ws(encode_ws(WS_BINARY, b"\x01hi")) == (WS_BINARY, b"\x01hi")
    kind, payload = decode_ws(encode_ws_close(1000, "bye"))
    assert kind == WS_CLOSE and payload == b"\x03\xe8bye"
    with pytest.raises(HeadError):
        decode_ws(b"\x09x")
    with pytest.raises(HeadError):
        decode_ws(b"")


def test_client_credentials_and_hop_headers_never_pass() -> None:
    kept = forwardable(
        [
            ("Authorization", "Bearer wgt_x"),
            ("Impersonate-User", "root"),
            ("Impersonate-Group", "system:masters"),
            ("Impersonate-Extra-scopes", "x"),
            ("Connection", "Upgrade"),
            ("Accept", "application/json"),
            ("User-Agent", "kubectl"),
        ]
    )
    assert kept == (("accept", "application/json"), ("user-agent", "kubectl"))


@pytest.mark.parametrize(
    ("method", "path", "query", "expected"),
    [
        ("GET", "/api/v1/namespaces/prod/pods", "", RequestInfo("list", "pods", "", "prod")),
        ("GET", "/api/v1/pods", "watch=true", RequestInfo("watch", "pods")),
        ("GET", "/api/v1/namespaces/prod/pods/a", "", RequestInfo("get", "pods", "", "prod", "a")),
        ("DELETE", "/api/v1/namespaces/prod/pods/a", "",
         RequestInfo("delete", "pods", "", "prod", "a")),
        ("DELETE", "/api/v1/namespaces/prod/pods", "",
         RequestInfo("deletecollection", "pods", "", "prod")),
        ("GET", "/api/v1/namespaces/d/pods/a/log", "follow=true",
         RequestInfo("get", "pods", "log", "d", "a")),
        ("GET", "/api/v1/namespaces/d/pods/a/exec", "command=ls",
         RequestInfo("create", "pods", "exec", "d", "a")),
        ("POST", "/api/v1/namespaces/d/pods/a/portforward", "",
         RequestInfo("create", "pods", "portforward", "d", "a")),
        ("PATCH", "/apis/apps/v1/namespaces/d/deployments/web", "",
         RequestInfo("patch", "deployments", "", "d", "web", "apps")),
        ("GET", "/api/v1/namespaces", "", RequestInfo("list", "namespaces")),
        ("GET", "/api/v1/namespaces/prod", "",
         RequestInfo("get", "namespaces", "", "prod", "prod")),
        ("GET", "/apis", "", RequestInfo("get")),
        ("GET", "/version", "", RequestInfo("get")),
    ],
)  # fmt: skip
def test_request_info(method: str, path: str, query: str, expected: RequestInfo) -> None:
    info = request_info(method, path, query)
    assert (info.verb, info.resource, info.subresource, info.namespace, info.name,
            info.api_group) == (expected.verb, expected.resource, expected.subresource,
                                expected.namespace, expected.name, expected.api_group)  # fmt: skip


def test_status_body_is_a_kubernetes_status() -> None:
    doc = json.loads(status_body(403, "no"))
    assert doc["kind"] == "Status" and doc["reason"] == "Forbidden" and doc["code"] == 403


def _secret(value: bytes) -> dict[str, Any]:
    data = {"k": base64.b64encode(value).decode()}
    return {"kind": "Secret", "metadata": {"name": "s"}, "data": data, "stringData": {"p": "x"}}


def test_masking_secrets_in_objects_lists_tables_and_watch_events() -> None:
    masker = Masker(True)
    doc = {"kind": "SecretList", "items": [{"metadata": {}, "data": {"a": "eA=="}}]}
    out = json.loads(masker.mask_json(json.dumps(doc).encode()))
    assert out["items"][0]["data"]["a"] == MASKED_B64
    out = json.loads(
        masker.mask_json(json.dumps({"type": "ADDED", "object": _secret(b"x")}).encode())
    )
    assert out["object"]["data"]["k"] == MASKED_B64 and out["object"]["stringData"]["p"] == MASKED
    table = {"kind": "Table", "rows": [{"cells": ["s"], "object": _secret(b"y")}]}
    out = json.loads(masker.mask_json(json.dumps(table).encode()))
    assert out["rows"][0]["object"]["data"]["k"] == MASKED_B64
    assert masker.masked == 5  # data and stringData of each


def test_masking_env_values_by_name_glob_anywhere() -> None:
    deployment = {"kind": "Deployment", "spec": {"template": {"spec": {"containers": [
        {"env": [{"name": "DB_PASSWORD", "value": "x"}, {"name": "MODE", "value": "y"},
                 {"name": "api_token", "valueFrom": {"secretKeyRef": {}}}]}]}}}}  # fmt: skip
    masker = Masker(False, ("*PASSWORD*", "*TOKEN"))
    out = json.loads(masker.mask_json(json.dumps(deployment).encode()))
    env = out["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env[0]["value"] == MASKED and env[1]["value"] == "y" and "value" not in env[2]


def test_secrets_are_left_alone_when_not_masked() -> None:
    out = json.loads(Masker(False).mask_json(json.dumps(_secret(b"z")).encode()))
    assert base64.b64decode(out["data"]["k"]) == b"z"


def test_non_json_cannot_be_masked() -> None:
    with pytest.raises(ValueError):
        Masker(True).mask_json(b"\x00protobuf")


def test_exec_recording_is_asciicast_output_and_resizes_never_stdin() -> None:
    rec = ExecRecorder(started=100.0, limit=200)
    rec.client_message(100.5, b"\x00secret typed\n")
    rec.client_message(100.6, b'\x04{"Width":120,"Height":40}')
    rec.server_message(101.0, b"\x01hello\r\n")
    rec.server_message(101.5, b"\x03{}")  # the status channel is not terminal output
    lines = [json.loads(line) for line in rec.take().splitlines()]
    assert lines == [[0.6, "r", "120x40"], [1.0, "o", "hello\r\n"]]
    assert json.loads(rec.header())["version"] == 2
    for i in range(10):
        rec.server_message(102.0 + i, b"\x02" + b"x" * 40)
    assert rec.truncated
    assert rec.take().splitlines()[-1].endswith('"\\r\\n[recording truncated]\\r\\n"]')
    rec.server_message(200.0, b"\x01more")
    assert rec.take() == ""


@given(
    method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "BREW"]),
    path=st.lists(st.text(max_size=8), max_size=8).map(lambda parts: "/" + "/".join(parts)),
    query=st.text(max_size=30),
)
def test_request_info_takes_any_path(method: str, path: str, query: str) -> None:
    info = request_info(method, path, query)
    assert info.verb
    assert info.describe()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["kind", "data", "env", "name", "value", "x"]), children,
                      max_size=4),
    max_leaves=20,
)  # fmt: skip


@given(json_values)
def test_masking_takes_any_json(doc: Any) -> None:
    out = Masker(True, ("*",)).mask_json(json.dumps(doc).encode())
    assert json.loads(out) is not None or doc is None


# ---- plain upgrades (SPDY) -------------------------------------------------------------

SPDY_HEAD = (
    b"POST /k8s/k8s/api/v1/namespaces/default/pods/web-1/exec?command=echo&stdout=true "
    b"HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer t\r\nConnection: Upgrade\r\n"
    b"Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n"
    b"X-Stream-Protocol-Version: channel.k8s.io\r\nContent-Length: 0\r\n\r\n"
)


def test_a_spdy_upgrade_head_parses() -> None:
    request = parse_upgrade(SPDY_HEAD)
    assert request is not None
    assert request.method == "POST"
    assert request.target.endswith("/exec?command=echo&stdout=true")
    assert request.upgrade == "SPDY/3.1"
    assert request.header("authorization") == "Bearer t"
    versions = [v for k, v in request.headers if k.lower() == "x-stream-protocol-version"]
    assert versions == ["v4.channel.k8s.io", "channel.k8s.io"]


@pytest.mark.parametrize(
    "head",
    [
        b"GET /api HTTP/1.1\r\nHost: gw\r\n\r\n",  # no upgrade
        SPDY_HEAD.replace(b"SPDY/3.1", b"websocket"),  # hypercorn's business
        SPDY_HEAD.replace(b"Connection: Upgrade", b"Connection: keep-alive"),
        SPDY_HEAD.replace(b"HTTP/1.1", b"HTTP/2.0", 1),
        SPDY_HEAD.replace(b"Host: gw", b"Host gw"),  # a header line without a colon
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"",
        b"\x00\xff garbage\r\n\r\n",
    ],
)
def test_anything_else_is_not_a_spdy_upgrade(head: bytes) -> None:
    assert parse_upgrade(head) is None


@given(st.binary(max_size=512))
def test_parse_upgrade_never_raises(data: bytes) -> None:
    parse_upgrade(data + b"\r\n\r\n")


def test_an_upgrade_request_head_round_trips_and_old_heads_still_decode() -> None:
    head = RequestHead("POST", "/api/v1/x/exec", upgrade="SPDY/3.1")
    assert decode_head(encode_head(head)) == head
    encoded = encode_head(RequestHead("GET", "/api"))
    doc = json.loads(encoded[4:])
    del doc["request"]["upgrade"]  # a head from an agent or gateway before raw upgrades
    body = json.dumps(doc).encode()
    old = decode_head(len(body).to_bytes(4, "big") + body)
    assert isinstance(old, RequestHead) and old.upgrade is None


def test_a_response_head_is_http_1_1() -> None:
    assert encode_response_head(101, "Switching Protocols", [("Upgrade", "SPDY/3.1")]) == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: SPDY/3.1\r\n\r\n"
    )
