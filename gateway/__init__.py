"""The Wardgate gateway: central, public, the enforcement point in the data path.

app.py          composition root: store, TLS, agent service, front door, admin API
config.py       the YAML configuration (pydantic)
frontdoor.py    ONE public port; protocols told apart by their first bytes
api/            HTTPS: admin API (OpenAPI), WebSocket entry of `wardgate tcp`
agents/         connected agents by pool; routing sessions to them over gRPC
sessions.py     the one session pipeline: resolve -> authorize -> record -> route
protocols/      client protocols (twins of agent/protocols/)
auth.py         bearer tokens -> Identity
audit.py        hash-chained audit events, written before the action they record
store/          SQLAlchemy Core + Alembic; SQLite by default, PostgreSQL at scale
crypto.py, tls.py   AES-GCM secret sealing, tokens; generated CA and certificates
"""
