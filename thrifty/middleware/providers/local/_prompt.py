"""Neutral messages to prompt token ids, through the model's own chat template.

The count of these ids is the exact prompt token count (it is what the model
reads), which is what :meth:`LocalProvider.estimate_prompt_tokens` returns.

Rendering rules:

* system, user and assistant messages pass their text; images are refused
  (the local models read text only); parts of the other wire format
  (:class:`~thrifty.types.OpaquePart`) are dropped;
* a request with tools needs a template that takes ``tools`` (Qwen's does,
  SmolLM2's does not); otherwise it is an InvalidRequestError. With
  ``tool_choice`` ``none`` the tools are simply not shown;
* assistant tool calls and tool results go to the template in the OpenAI
  shape when it takes tools; otherwise they are written out as text (the
  result as a user turn, since such templates know no ``tool`` role);
* a final assistant message is continued rather than closed (Anthropic's
  prefill), with ``continue_final_message``;
* a tokenizer without a chat template (a base model) gets plain
  ``Role: text`` lines ending in ``Assistant:``.
"""

from __future__ import annotations

import json
from typing import Any

from thrifty.errors import InvalidRequestError
from thrifty.types import ImagePart, Message, Part, Request, TextPart, ToolCallPart, ToolResultPart

__all__ = ["render_prompt", "template_supports_tools"]


def template_supports_tools(tokenizer: Any) -> bool:
    """True when the tokenizer's chat template reads the ``tools`` variable."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = " ".join(str(t) for t in template.values())
    return isinstance(template, str) and "tools" in template


def render_prompt(tokenizer: Any, request: Request, model_name: str) -> list[int]:
    """The prompt token ids of ``request`` for this tokenizer."""
    with_tools = bool(request.tools) and not (request.tool_choice and request.tool_choice.mode == "none")
    native_tools = template_supports_tools(tokenizer)
    if with_tools and not native_tools:
        raise InvalidRequestError(
            f"model local/{model_name} does not support tools (its chat template has no tool format); "
            "send the request without tools or use a model whose template supports them",
            param="tools",
        )
    messages = _to_template_messages(request.messages, native_tools)
    if not messages:
        raise InvalidRequestError("the request has no messages", param="messages")
    if getattr(tokenizer, "chat_template", None) is None:
        text = _plain_prompt(messages)
    else:
        text = _apply_template(tokenizer, messages, request, with_tools, model_name)
    return list(tokenizer.encode(text, add_special_tokens=False))


def _apply_template(
    tokenizer: Any, messages: list[dict[str, Any]], request: Request, with_tools: bool, model_name: str
) -> str:
    import jinja2  # a dependency of transformers' chat templates

    continue_final = messages[-1]["role"] == "assistant"
    tools = [_tool_schema(t) for t in request.tools] if with_tools else None
    try:
        return tokenizer.apply_chat_template(
            messages,
            tools=tools,
            tokenize=False,
            add_generation_prompt=not continue_final,
            continue_final_message=continue_final,
        )
    except (jinja2.TemplateError, ValueError, TypeError) as exc:
        raise InvalidRequestError(
            f"the chat template of model local/{model_name} rejected the messages: {exc}", param="messages"
        ) from exc


def _tool_schema(tool: Any) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.parameters}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def _to_template_messages(messages: list[Message], native_tools: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        text_parts: list[str] = []
        calls: list[ToolCallPart] = []
        results: list[ToolResultPart] = []
        for part in message.content:
            if isinstance(part, TextPart):
                text_parts.append(part.text)
            elif isinstance(part, ToolCallPart):
                calls.append(part)
            elif isinstance(part, ToolResultPart):
                results.append(part)
            elif isinstance(part, ImagePart):
                raise InvalidRequestError(
                    "local models read text only; remove the image from the messages",
                    param=f"messages[{index}]",
                )
            # OpaquePart: the other wire's private content, dropped
        if message.role == "tool":
            results = results or [ToolResultPart(tool_call_id="", content=message.content)]
            out.extend(_tool_result(r, native_tools) for r in results)
            continue
        out.extend(_tool_result(r, native_tools) for r in results)  # Anthropic: results in a user turn
        text = "".join(text_parts)
        if results and not text and not calls:
            continue
        entry: dict[str, Any] = {"role": message.role, "content": text}
        if calls:
            if native_tools:
                entry["tool_calls"] = [_tool_call(c) for c in calls]
            else:
                rendered = "\n".join(f"[called tool {c.name} with arguments {c.arguments}]" for c in calls)
                entry["content"] = f"{text}\n{rendered}" if text else rendered
        out.append(entry)
    return out


def _tool_call(call: ToolCallPart) -> dict[str, Any]:
    try:
        arguments: Any = json.loads(call.arguments) if call.arguments else {}
    except ValueError:
        arguments = call.arguments
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": arguments}}


def _tool_result(result: ToolResultPart, native_tools: bool) -> dict[str, Any]:
    text = "".join(_part_text(p) for p in result.content)
    if native_tools:
        return {"role": "tool", "tool_call_id": result.tool_call_id, "content": text}
    label = f"Result of tool call {result.tool_call_id}" if result.tool_call_id else "Tool result"
    if result.is_error:
        label += " (error)"
    return {"role": "user", "content": f"{label}:\n{text}"}


def _part_text(part: Part) -> str:
    if isinstance(part, TextPart):
        return part.text
    if isinstance(part, ToolResultPart):
        return "".join(_part_text(p) for p in part.content)
    return ""


def _plain_prompt(messages: list[dict[str, Any]]) -> str:
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    if messages[-1]["role"] == "assistant":
        return "\n".join(lines)
    return "\n".join(lines) + "\nAssistant:"
