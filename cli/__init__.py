"""The `wardgate` command: runs the gateway and the agent, and talks to the admin API.

main.py     the click command tree (the public interface: keep names stable)
errors.py   what a person sees when a command fails (short messages, --debug)
client.py   finding the gateway and the user's credential; the HTTP client
tcp.py      `wardgate tcp`: local port -> WebSocket -> gateway -> agent -> target
runtime.py  event loop setup (uvloop, grpc tuning) and signal handling
"""
