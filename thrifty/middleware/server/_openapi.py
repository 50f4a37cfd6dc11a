"""The proxy's OpenAPI document (served at ``/openapi.json``), written by hand.

It describes what the proxy checks and answers: the request fields the codecs
validate (other fields pass through to the upstream, so objects stay open),
the response shapes, the error shapes of each API, and the ``x-thrifty-*``
headers. The tests fuzz the running server against it (schemathesis).
"""

from __future__ import annotations

from typing import Any

_STR = {"type": "string"}
_INT = {"type": "integer"}
_NUM = {"type": "number"}
_BOOL = {"type": "boolean"}
_OBJ = {"type": "object"}
_NULL = {"type": "null"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, _NULL]}


_THRIFTY_HEADERS = {
    "x-thrifty-request-id": {"description": "The call's id: its ledger row (the first attempt's).",
                             "schema": _STR},
    "x-thrifty-cost-usd": {"description": "The call's cost in USD, priced from its usage; `unpriced` when the "
                                          "model has no known price; `pending` on a stream (its final chunk "
                                          "carries the cost).", "schema": _STR},
    "x-thrifty-overhead-ms": {"description": "thrifty's own time on this call, upstream excluded.",
                              "schema": _STR},
    "x-thrifty-tokens-saved": {"description": "Prompt tokens thrifty's techniques saved on this call.",
                               "schema": _STR},
}

_REQUEST_HEADERS = [
    {"name": "x-thrifty-options", "in": "header", "required": False, "schema": _STR,
     "description": "thrifty options as JSON (tags, user, project); or a `thrifty` body field, not both."},
    {"name": "x-thrifty-tags", "in": "header", "required": False, "schema": _STR,
     "description": "Comma-separated ledger tags, added to the options' tags."},
    {"name": "x-thrifty-project", "in": "header", "required": False, "schema": _STR,
     "description": "The project the spend belongs to (the options' `project` wins)."},
]

_OPENAI_MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool", "function"]},
        "content": {"anyOf": [_STR, {"type": "array", "items": {
            "type": "object", "required": ["type"], "properties": {"type": _STR}}}, _NULL]},
        "name": _STR,
        "tool_call_id": _STR,
        "tool_calls": {"type": "array", "items": {
            "type": "object", "required": ["id", "function"],
            "properties": {"id": _STR, "type": _STR, "function": {
                "type": "object", "required": ["name"], "properties": {"name": _STR, "arguments": _STR}}}}},
    },
}

_OPENAI_REQUEST = {
    "type": "object",
    "required": ["model", "messages"],
    "description": "An OpenAI Chat Completions request. Fields not listed pass through to an OpenAI-wire upstream.",
    "properties": {
        "model": {"type": "string", "description": "`provider/model`, an alias (`default`, ...) or a bare name."},
        "messages": {"type": "array", "minItems": 1, "items": _OPENAI_MESSAGE},
        "max_tokens": {"type": "integer", "minimum": 1},
        "max_completion_tokens": {"type": "integer", "minimum": 1},
        "temperature": _NUM,
        "top_p": _NUM,
        "stop": {"anyOf": [_STR, {"type": "array", "items": _STR}, _NULL]},
        "stream": _BOOL,
        "stream_options": {"type": "object", "properties": {"include_usage": _BOOL}},
        "n": {"type": "integer", "minimum": 1},
        "seed": _INT,
        "logprobs": _BOOL,
        "top_logprobs": {"type": "integer", "minimum": 0},
        "tools": {"type": "array", "items": {
            "type": "object", "required": ["function"],
            "properties": {"type": _STR, "function": {
                "type": "object", "required": ["name"],
                "properties": {"name": _STR, "description": _STR, "parameters": _OBJ, "strict": _BOOL}}}}},
        "tool_choice": {"anyOf": [{"type": "string", "enum": ["auto", "none", "required"]}, {
            "type": "object", "required": ["function"],
            "properties": {"type": _STR, "function": {"type": "object", "required": ["name"],
                                                      "properties": {"name": _STR}}}}]},
        "parallel_tool_calls": _BOOL,
        "response_format": {"type": "object", "required": ["type"], "properties": {
            "type": {"type": "string", "enum": ["text", "json_object", "json_schema"]},
            "json_schema": {"type": "object", "required": ["name"], "properties": {
                "name": _STR, "schema": _OBJ, "strict": _BOOL, "description": _STR}}}},
        "user": _STR,
        "thrifty": _ref("ThriftyOptions"),
    },
}

_ANTHROPIC_BLOCKS = {"anyOf": [_STR, {"type": "array", "items": {
    "type": "object", "required": ["type"], "properties": {"type": _STR}}}]}

_ANTHROPIC_MESSAGES = {"type": "array", "items": {
    "type": "object", "required": ["role", "content"],
    "properties": {"role": {"type": "string", "enum": ["user", "assistant"]}, "content": _ANTHROPIC_BLOCKS}}}

_ANTHROPIC_TOOLS = {"type": "array", "items": {"type": "object", "properties": {
    "name": _STR, "description": _STR, "input_schema": _OBJ, "type": _STR}}}

_ANTHROPIC_REQUEST = {
    "type": "object",
    "required": ["model", "max_tokens", "messages"],
    "description": "An Anthropic Messages request. Fields not listed pass through to an Anthropic upstream.",
    "properties": {
        "model": _STR,
        "max_tokens": {"type": "integer", "minimum": 1},
        "messages": _ANTHROPIC_MESSAGES,
        "system": _ANTHROPIC_BLOCKS,
        "stop_sequences": {"type": "array", "items": _STR},
        "temperature": _NUM,
        "top_p": _NUM,
        "stream": _BOOL,
        "tools": _ANTHROPIC_TOOLS,
        "tool_choice": {"type": "object", "required": ["type"], "properties": {
            "type": {"type": "string", "enum": ["auto", "any", "tool", "none"]}, "name": _STR,
            "disable_parallel_tool_use": _BOOL}},
        "metadata": {"type": "object", "properties": {"user_id": _STR}},
        "thrifty": _ref("ThriftyOptions"),
    },
}

_COUNT_REQUEST = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": _STR,
        "messages": _ANTHROPIC_MESSAGES,
        "system": _ANTHROPIC_BLOCKS,
        "tools": _ANTHROPIC_TOOLS,
        "thrifty": _ref("ThriftyOptions"),
    },
}

_SSE_EVENT = {
    "type": "object",
    "description": "One server-sent event (the schema of each event, as OpenAPI 3.1 reads it for this media type).",
    "required": ["data"],
    "properties": {"event": _STR, "data": {"type": "string", "description": "A JSON object, or `[DONE]`."}},
}

_OPENAI_USAGE = {"type": "object", "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
                 "properties": {"prompt_tokens": _INT, "completion_tokens": _INT, "total_tokens": _INT}}

_CHAT_COMPLETION = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices", "usage"],
    "properties": {
        "id": _STR, "object": {"const": "chat.completion"}, "created": _INT, "model": _STR,
        "choices": {"type": "array", "items": {
            "type": "object", "required": ["index", "message", "finish_reason"],
            "properties": {"index": _INT, "finish_reason": _nullable(_STR), "message": {
                "type": "object", "required": ["role"],
                "properties": {"role": {"const": "assistant"}, "content": _nullable(_STR),
                               "tool_calls": {"type": "array", "items": _OBJ}}}}}},
        "usage": _OPENAI_USAGE,
    },
}

_MESSAGE = {
    "type": "object",
    "required": ["id", "type", "role", "model", "content", "stop_reason", "usage"],
    "properties": {
        "id": _STR, "type": {"const": "message"}, "role": {"const": "assistant"}, "model": _STR,
        "content": {"type": "array", "items": {"type": "object", "required": ["type"], "properties": {"type": _STR}}},
        "stop_reason": _nullable(_STR), "stop_sequence": _nullable(_STR),
        "usage": {"type": "object", "required": ["input_tokens", "output_tokens"],
                  "properties": {"input_tokens": _INT, "output_tokens": _INT}},
    },
}

_OPENAI_ERROR = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["message", "type"],
                             "properties": {"message": _STR, "type": _STR, "param": _nullable(_STR),
                                            "code": _nullable(_STR)}}},
}

_ANTHROPIC_ERROR = {
    "type": "object", "required": ["type", "error"],
    "properties": {"type": {"const": "error"},
                   "error": {"type": "object", "required": ["type", "message"],
                             "properties": {"type": _STR, "message": _STR}}},
}

_THRIFTY_OPTIONS = {
    "type": "object",
    "additionalProperties": False,
    "description": "Per-call thrifty options; an unknown key is a 400.",
    "properties": {"tags": {"type": "array", "items": _STR}, "user": _nullable(_STR),
                   "project": _nullable(_STR)},
}

_MODEL_LIST = {
    "type": "object", "required": ["object", "data"],
    "description": "OpenAI's model list, with Anthropic's fields too (type, display_name, has_more...).",
    "properties": {
        "object": {"const": "list"},
        "data": {"type": "array", "items": {"type": "object", "required": ["id", "object"], "properties": {
            "id": _STR, "object": {"const": "model"}, "created": _INT, "owned_by": _STR, "type": _STR,
            "display_name": _STR, "created_at": _STR}}},
        "has_more": _BOOL, "first_id": _nullable(_STR), "last_id": _nullable(_STR),
    },
}

_HEALTH = {
    "type": "object", "required": ["status", "ledger"],
    "properties": {"status": {"type": "string", "enum": ["ok", "degraded"]}, "version": _STR,
                   "ledger": {"type": "object", "properties": {
                       "enabled": _BOOL, "healthy": _BOOL, "buffered_rows": _INT, "spilled_rows": _INT,
                       "written_rows": _INT, "rejected_rows": _INT}}},
}


def _errors(schema: str, statuses: tuple[int, ...]) -> dict[str, Any]:
    descriptions = {400: "Malformed JSON, a wrong type or a missing field", 401: "A missing or unknown key",
                    403: "The key may not use that model", 404: "Unknown model or provider",
                    413: "The body is over the size limit", 429: "A budget or rate limit was hit",
                    500: "An internal error (no details)", 502: "The upstream failed or could not be reached",
                    503: "A local model could not be loaded", 504: "The upstream did not answer in time"}
    return {str(s): {"description": descriptions[s], "headers": _THRIFTY_HEADERS,
                     "content": {"application/json": {"schema": _ref(schema)}}} for s in statuses}


_CALL_ERRORS = (400, 401, 403, 404, 413, 429, 500, 502, 503, 504)


def openapi_document(version: str) -> dict[str, Any]:
    """The document; ``version`` is thrifty's."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "thrifty proxy",
            "version": version,
            "description": "An OpenAI- and Anthropic-compatible proxy that accounts for every token. Point an "
                           "OpenAI client at `<this server>/v1`, an Anthropic client at `<this server>`.",
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "A thrifty virtual key, when keys are configured."},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
            "schemas": {
                "ChatCompletionRequest": _OPENAI_REQUEST,
                "ChatCompletion": _CHAT_COMPLETION,
                "MessagesRequest": _ANTHROPIC_REQUEST,
                "Message": _MESSAGE,
                "CountTokensRequest": _COUNT_REQUEST,
                "ThriftyOptions": _THRIFTY_OPTIONS,
                "OpenAIError": _OPENAI_ERROR,
                "AnthropicError": _ANTHROPIC_ERROR,
                "ModelList": _MODEL_LIST,
                "Health": _HEALTH,
            },
        },
        "security": [{}, {"bearer": []}, {"apiKey": []}],
        "paths": {
            "/v1/chat/completions": {"post": {
                "operationId": "createChatCompletion",
                "summary": "OpenAI Chat Completions, to any configured provider",
                "parameters": _REQUEST_HEADERS,
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": _ref("ChatCompletionRequest")}}},
                "responses": {
                    "200": {"description": "A chat completion, or with `stream: true` server-sent "
                                           "`chat.completion.chunk` events ending in `data: [DONE]`.",
                            "headers": _THRIFTY_HEADERS,
                            "content": {"application/json": {"schema": _ref("ChatCompletion")},
                                        "text/event-stream": {"schema": _SSE_EVENT}}},
                    **_errors("OpenAIError", _CALL_ERRORS),
                },
            }},
            "/v1/messages": {"post": {
                "operationId": "createMessage",
                "summary": "Anthropic Messages, to any configured provider",
                "parameters": _REQUEST_HEADERS,
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": _ref("MessagesRequest")}}},
                "responses": {
                    "200": {"description": "A message, or with `stream: true` Anthropic's server-sent events.",
                            "headers": _THRIFTY_HEADERS,
                            "content": {"application/json": {"schema": _ref("Message")},
                                        "text/event-stream": {"schema": _SSE_EVENT}}},
                    **_errors("AnthropicError", _CALL_ERRORS),
                },
            }},
            "/v1/messages/count_tokens": {"post": {
                "operationId": "countTokens",
                "summary": "Prompt tokens of a Messages request (exact for local models, else an estimate)",
                "parameters": _REQUEST_HEADERS,
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": _ref("CountTokensRequest")}}},
                "responses": {
                    "200": {"description": "The count.", "content": {"application/json": {"schema": {
                        "type": "object", "required": ["input_tokens"],
                        "properties": {"input_tokens": {"type": "integer", "minimum": 0}}}}}},
                    **_errors("AnthropicError", (400, 401, 403, 404, 413, 500, 503)),
                },
            }},
            "/v1/models": {"get": {
                "operationId": "listModels",
                "summary": "Aliases, local models and configured providers' known models",
                "responses": {
                    "200": {"description": "The models.",
                            "content": {"application/json": {"schema": _ref("ModelList")}}},
                    **_errors("OpenAIError", (401,)),
                },
            }},
            "/healthz": {"get": {
                "operationId": "health",
                "summary": "Liveness, and the ledger recorder's state",
                "security": [{}],
                "responses": {"200": {"description": "Up; `degraded` while the ledger database is unreachable "
                                                     "(rows are buffered).",
                                      "content": {"application/json": {"schema": _ref("Health")}}}},
            }},
            "/metrics": {"get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (text exposition format)",
                "security": [{}],
                "responses": {"200": {"description": "The metrics.",
                                      "content": {"text/plain": {"schema": _STR}}}},
            }},
            "/": {"get": {
                "operationId": "index",
                "summary": "Where the APIs are",
                "security": [{}],
                "responses": {"200": {"description": "The base URLs and endpoints.",
                                      "content": {"application/json": {"schema": _OBJ}}}},
            }},
            "/openapi.json": {"get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [{}],
                "responses": {"200": {"description": "The OpenAPI document.",
                                      "content": {"application/json": {"schema": _OBJ}}}},
            }},
        },
    }
