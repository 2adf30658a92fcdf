"""Code both sides of Wardgate use.

    shared.pb          generated protobuf/gRPC stubs (never edited; `make proto`)
    shared.tunnel      the gateway<->agent transport: typed frames and the per-session
                       state machine (sans-I/O), the pb codec, and the grpc.aio driver
                       that turns a gRPC stream into a `TunnelStream`
    shared.masking     result-masking rules, detectors and strategies (sans-I/O); the
                       PostgreSQL rewriter that applies them is shared.pgwire.masking
    shared.agentkey    the `wardgate://NAME:SECRET@HOST:PORT` agent key (sans-I/O)
    shared.backoff     reconnect delays with jitter (sans-I/O)
    shared.tasks       the one place that creates asyncio tasks: named and owned
    shared.tlsutil     client-side TLS: CA pinning by fingerprint

Only shared.tunnel imports shared.pb; gateway and agent speak frames.
"""
