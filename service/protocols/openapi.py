"""What the protocols' routes add to the OpenAPI document."""

from __future__ import annotations

from pydantic import BaseModel


def json_body(model: type[BaseModel], other_content: dict | None = None) -> dict:
    """`openapi_extra` documenting a required JSON body of `model`, and any other content types
    the route takes."""
    content = {"application/json": {"schema": inline_schema(model)}, **(other_content or {})}
    return {"requestBody": {"required": True, "content": content}}


def inline_schema(model: type[BaseModel]) -> dict:
    """`model`'s JSON schema with its definitions written in place, for bodies documented
    through `openapi_extra` (whose references FastAPI does not collect)."""
    return inline(model.model_json_schema())


def inline(schema: dict) -> dict:
    """A JSON schema with its `$defs` written in place of their references."""
    schema = dict(schema)
    definitions = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(definitions[node["$ref"].rsplit("/", 1)[1]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)
