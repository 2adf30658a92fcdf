"""The OpenAPI document as the bundled Swagger UI (4.x, OpenAPI 3.0) reads it."""

from __future__ import annotations

from typing import Any

from gateway.api.docs import as_openapi_30


def test_nulls_become_nullable_and_the_version_3_0() -> None:
    items = {"type": "array", "items": {"$ref": "#/components/schemas/X"}}
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "components": {
            "schemas": {
                "Req": {
                    "properties": {
                        "reason": {"anyOf": [{"type": "string"}, {"type": "null"}], "title": "R"},
                        "either": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                        "many": {
                            "oneOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]
                        },
                        "items": items,
                    }
                }
            }
        },
    }
    converted = as_openapi_30(document)
    assert converted["openapi"] == "3.0.3"
    props = converted["components"]["schemas"]["Req"]["properties"]
    assert props["reason"] == {"type": "string", "title": "R", "nullable": True}
    assert props["either"] == {"anyOf": [{"type": "string"}, {"type": "integer"}]}
    assert props["many"] == {"oneOf": [{"type": "string"}, {"type": "integer"}], "nullable": True}
    assert props["items"] == items
    assert document["openapi"] == "3.1.0"  # the original is left alone
