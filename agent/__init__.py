"""The Wardgate agent: runs next to private resources and dials OUT to the gateway.

    app.py          the agent process: reconnect loop with backoff, control stream,
                    keepalive pings, one owned task per session
    secrets.py      resolves secret references (`env:NAME`, `file:PATH`) locally
    protocols/      one module per connection type, the twin of gateway/protocols/

The agent never listens on a port: no inbound firewall hole is needed.
"""
