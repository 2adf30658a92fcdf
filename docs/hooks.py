"""MkDocs hook: the reference pages generated from the code at build time.

A page holding one of the markers below gets it replaced, so the reference cannot drift:

- `<!-- wardgate:config -->`: every pydantic model reachable from `GatewayConfig`
  (gateway/config.py): each field's YAML key, type, default and description. A description
  is the field's `description=` if it has one, else the comment on or just above its line in
  the source (that is where this code base writes them).
- `<!-- wardgate:api -->`: each path and method of the gateway's OpenAPI document (the
  FastAPI app as `wardgate gateway` builds it, SSH routes included), with summary and
  parameters.

Nothing here needs a network or a running gateway.
"""

from __future__ import annotations

import inspect
import io
import json
import textwrap
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

CONFIG_MARKER = "<!-- wardgate:config -->"
API_MARKER = "<!-- wardgate:api -->"


def on_page_markdown(markdown: str, **_: Any) -> str:
    if CONFIG_MARKER in markdown:
        from gateway.config import GatewayConfig

        markdown = markdown.replace(CONFIG_MARKER, config_reference(GatewayConfig))
    if API_MARKER in markdown:
        markdown = markdown.replace(API_MARKER, api_reference(openapi()))
    return markdown


# ---- configuration ---------------------------------------------------------------------


def config_reference(root: type[BaseModel]) -> str:
    models = reachable_models(root)
    out: list[str] = []
    for model in models:
        title = "Top level" if model is root else model.__name__
        out.append(f"## {title} {{#{anchor(model)}}}\n")
        doc = model.__dict__.get("__doc__")  # its own, not BaseModel's
        if doc:
            out.append(inspect.cleandoc(doc) + "\n")
        out.append(f"Defined in `{model.__module__}`.\n")
        out.append("| key | type | default | description |")
        out.append("|---|---|---|---|")
        comments = source_comments(model)
        for name, info in model.model_fields.items():
            key = info.alias or name
            desc = info.description or comments.get(name, "")
            kind = type_text(info.annotation) + bounds_text(info)
            out.append(f"| `{key}` | {kind} | {default_text(info)} | {cell(desc)} |")
        out.append("")
    return "\n".join(out)


def reachable_models(root: type[BaseModel]) -> list[type[BaseModel]]:
    """Root first, then each nested model in the order fields name them."""
    seen: list[type[BaseModel]] = []
    todo = [root]
    while todo:
        model = todo.pop(0)
        if model in seen:
            continue
        seen.append(model)
        for info in model.model_fields.values():
            todo.extend(m for m in models_in(info.annotation) if m not in seen)
    return seen


def models_in(annotation: Any) -> list[type[BaseModel]]:
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found.extend(models_in(arg))
    return found


def anchor(model: type[BaseModel]) -> str:
    return model.__name__.lower()


def type_text(annotation: Any) -> str:
    """A type as a reader of YAML thinks of it, nested models linked to their section."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{anchor(annotation)})"
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(type_text(a) for a in args)
    if origin in (list, tuple, set, frozenset):
        return f"list of {type_text(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {type_text(args[0])} to {type_text(args[1])}" if args else "mapping"
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    names = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path"}
    if annotation in names:
        return str(names[annotation])
    return f"`{getattr(annotation, '__name__', str(annotation))}`"


def bounds_text(info: FieldInfo) -> str:
    """Numeric bounds (`Field(ge=..., le=...)`) as the reader checks them."""
    signs = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    bounds = [
        f"{sign} {getattr(m, attr)}"
        for m in info.metadata
        for attr, sign in signs.items()
        if getattr(m, attr, None) is not None
    ]
    return f", {' and '.join(bounds)}" if bounds else ""


def default_text(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True, validated_data={})
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        # A nested section left out: its own defaults apply (listed in its section).
        return "see its section"
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        value = [v.model_dump(exclude_defaults=True, mode="json") for v in value]
    return f"`{json.dumps(value, default=str)}`"


def cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def source_comments(model: type[BaseModel]) -> dict[str, str]:
    """Field name -> its comment: the one ending its line, else the lines just above; a field
    inherited from a base model has its comment in the base's source."""
    out: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if inspect.isclass(cls) and issubclass(cls, BaseModel) and cls is not BaseModel:
            out.update(own_comments(cls, set(model.model_fields)))
    return out


def own_comments(model: type[BaseModel], fields: set[str]) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(model))
    except (OSError, TypeError):
        return {}
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    out: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        name = stripped.split(":", 1)[0]
        if not (line.startswith("    ") and not line.startswith("     ")):
            continue
        if name not in fields or not stripped.startswith(f"{name}:"):
            continue
        if number in comments and not stripped.startswith("#"):
            out[name] = comments[number]
            continue
        above: list[str] = []
        n = number - 1
        while n >= 1 and lines[n - 1].strip().startswith("#"):
            above.insert(0, comments.get(n, ""))
            n -= 1
        if above:
            out[name] = " ".join(above)
    return out


# ---- API -------------------------------------------------------------------------------


def openapi() -> dict[str, Any]:
    """The OpenAPI document of the app `wardgate gateway` serves, built without serving it.

    Route declarations only close over the dependencies, so placeholders do for them."""
    from gateway.api.app import build_app
    from gateway.api.deps import ApiDeps
    from gateway.api.members import members_router
    from gateway.api.ssh import ssh_router
    from gateway.api.terminate import terminate_router

    placeholder: Any = None
    deps = ApiDeps(
        store=placeholder,
        auth=placeholder,
        broker=placeholder,
        registry=placeholder,
        auditor=placeholder,
        secret_box=None,
        ca_pem=b"",
        ca_fingerprint="",
        agent_host="",
        agent_port=0,
        insecure_agents=False,
    )
    app = build_app(deps)
    app.include_router(ssh_router(placeholder, placeholder, Path(), Path(), user_ca=None))
    app.include_router(members_router(placeholder, ""))
    app.include_router(terminate_router(placeholder))
    return app.openapi()


METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def api_reference(doc: dict[str, Any]) -> str:
    out: list[str] = []
    info = doc.get("info", {})
    if info.get("description"):
        out.append(info["description"] + "\n")
    out.append("| method | path | summary |")
    out.append("|---|---|---|")
    for path, item in sorted(doc["paths"].items()):
        for method in METHODS:
            if method in item:
                out.append(f"| {method.upper()} | `{path}` | {cell(summary(item[method]))} |")
    out.append("")
    for path, item in sorted(doc["paths"].items()):
        for method in METHODS:
            if method not in item:
                continue
            op = item[method]
            out.append(f"### {method.upper()} `{path}`\n")
            text = op.get("description") or ""
            out.append((text.strip() or summary(op)) + "\n")
            params = op.get("parameters", [])
            if params:
                out.append("| parameter | in | type | required |")
                out.append("|---|---|---|---|")
                for p in params:
                    out.append(
                        f"| `{p['name']}` | {p['in']} | {schema_text(p.get('schema', {}), doc)} "
                        f"| {'yes' if p.get('required') else 'no'} |"
                    )
                out.append("")
            body = op.get("requestBody", {}).get("content", {})
            for media, content in body.items():
                out.append(f"Body (`{media}`): {schema_text(content.get('schema', {}), doc)}\n")
    return "\n".join(out)


def summary(op: dict[str, Any]) -> str:
    return str(op.get("summary") or op.get("operationId", ""))


def schema_text(schema: dict[str, Any], doc: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        target = doc.get("components", {}).get("schemas", {}).get(name, {})
        props = target.get("properties", {})
        required = set(target.get("required", []))
        fields = ", ".join(f"`{k}`{'' if k in required else '?'}" for k in props)
        return f"{name} ({fields})" if fields else name
    if "anyOf" in schema:
        return " or ".join(schema_text(s, doc) for s in schema["anyOf"])
    if schema.get("type") == "array":
        return f"array of {schema_text(schema.get('items', {}), doc)}"
    return str(schema.get("type", "any"))
