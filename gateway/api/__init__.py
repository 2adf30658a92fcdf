"""The HTTPS side of the public endpoint: the admin API (JSON, OpenAPI at /openapi.json and
/docs), the WebSocket entry of `wardgate tcp`, and the bridge that lets hypercorn serve a
connection the front door already accepted and decrypted."""
