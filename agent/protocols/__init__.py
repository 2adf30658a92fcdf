"""Connection types on the agent side; each file has a twin under gateway/protocols/.

A protocol module exports `async def serve(stream, target)`: it owns the session from the
OpenResult to the end, and must answer OpenResult exactly once."""
