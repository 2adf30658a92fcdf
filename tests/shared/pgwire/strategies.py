"""Hypothesis strategies for every pgwire message, shared by the round-trip and fuzz tests."""

from __future__ import annotations

from hypothesis import strategies as st

from shared.pgwire import backend as be
from shared.pgwire import frontend as fe
from shared.pgwire.startup import StartupMessage

# Text that can travel in a C string: no NUL, no lone surrogates (not encodable as UTF-8).
ctext = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0"), max_size=40)
names = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\0"), min_size=1, max_size=20
)
utf8_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=10)
int16 = st.integers(-(2**15), 2**15 - 1)
int32 = st.integers(-(2**31), 2**31 - 1)
uint32 = st.integers(0, 2**32 - 1)
formats = st.sampled_from([0, 1])
values = st.lists(st.none() | st.binary(max_size=30), max_size=12).map(tuple)
kinds = st.sampled_from(["S", "P"])


@st.composite
def binds(draw: st.DrawFn) -> fe.Bind:
    params = draw(values)
    n_formats = draw(st.sampled_from(sorted({0, 1, len(params)})))
    return fe.Bind(
        draw(ctext),
        draw(ctext),
        tuple(draw(formats) for _ in range(n_formats)),
        params,
        tuple(draw(st.lists(formats, max_size=5))),
    )


frontend_messages: st.SearchStrategy[fe.FrontendMessage] = st.one_of(
    st.builds(fe.Query, ctext),
    st.builds(fe.Parse, ctext, ctext, st.lists(uint32, max_size=8).map(tuple)),
    binds(),
    st.builds(fe.Describe, kinds, ctext),
    st.builds(fe.Execute, ctext, int32),
    st.builds(fe.Close, kinds, ctext),
    st.just(fe.Sync()),
    st.just(fe.Flush()),
    st.just(fe.Terminate()),
    st.builds(fe.CopyData, st.binary(max_size=100)),
    st.just(fe.CopyDone()),
    st.builds(fe.CopyFail, ctext),
    st.builds(fe.PasswordMessage, st.binary(max_size=60)),
    st.builds(fe.FunctionCall, uint32, st.binary(max_size=40)),
)

# Error and notice fields: codes are single non-NUL bytes (as latin-1 characters).
field_codes = st.characters(min_codepoint=1, max_codepoint=255)
report_fields = st.dictionaries(field_codes, ctext, max_size=8)

fields = st.builds(be.Field, ctext, uint32, int16, uint32, int16, int32, int16)

# AuthenticationOther must not use a code that has its own class.
other_auth_codes = int32.filter(lambda c: c not in (0, 3, 5, 10, 11, 12))

backend_messages: st.SearchStrategy[be.BackendMessage] = st.one_of(
    st.just(be.AuthenticationOk()),
    st.just(be.AuthenticationCleartextPassword()),
    st.builds(be.AuthenticationMD5Password, st.binary(min_size=4, max_size=4)),
    st.builds(be.AuthenticationSASL, st.lists(names, max_size=4).map(tuple)),
    st.builds(be.AuthenticationSASLContinue, st.binary(max_size=60)),
    st.builds(be.AuthenticationSASLFinal, st.binary(max_size=60)),
    st.builds(be.AuthenticationOther, other_auth_codes, st.binary(max_size=20)),
    st.builds(be.ParameterStatus, ctext, ctext),
    st.builds(be.BackendKeyData, int32, st.binary(min_size=4, max_size=256)),
    st.builds(be.ReadyForQuery, st.sampled_from(["I", "T", "E"])),
    st.builds(be.NegotiateProtocolVersion, int32, st.lists(ctext, max_size=4).map(tuple)),
    st.builds(be.RowDescription, st.lists(fields, max_size=5).map(tuple)),
    st.builds(be.DataRow, values),
    st.builds(be.CommandComplete, ctext),
    st.builds(be.ErrorResponse, report_fields),
    st.builds(be.NoticeResponse, report_fields),
    st.just(be.EmptyQueryResponse()),
    st.just(be.ParseComplete()),
    st.just(be.BindComplete()),
    st.just(be.CloseComplete()),
    st.just(be.NoData()),
    st.just(be.PortalSuspended()),
    st.builds(be.ParameterDescription, st.lists(uint32, max_size=8).map(tuple)),
    st.builds(be.CopyInResponse, formats, st.lists(int16, max_size=5).map(tuple)),
    st.builds(be.CopyOutResponse, formats, st.lists(int16, max_size=5).map(tuple)),
    st.builds(be.CopyBothResponse, formats, st.lists(int16, max_size=5).map(tuple)),
    st.builds(fe.CopyData, st.binary(max_size=100)),
    st.just(fe.CopyDone()),
    st.builds(be.NotificationResponse, int32, ctext, ctext),
    st.builds(be.FunctionCallResponse, st.none() | st.binary(max_size=30)),
)


@st.composite
def startup_messages(draw: st.DrawFn) -> StartupMessage:
    params = draw(st.dictionaries(names, ctext, max_size=6))
    params["user"] = draw(names)
    return StartupMessage(params, (3, draw(st.integers(0, 0xFFFF))))
