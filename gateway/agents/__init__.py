"""Agents as the gateway sees them.

`registry` keeps the connected agents by pool, routes each new session to a healthy one
and hands back its `TunnelStream`; `service` authenticates the gRPC streams agents open
(one control stream per agent, one stream per session) and feeds them to the registry.
"""
