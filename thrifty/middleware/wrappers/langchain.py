"""LangChain chat models through thrifty: ``thrifty.wrap(ChatOpenAI(...))``, ``thrifty.wrap(ChatAnthropic(...))``.

The result is a copy of the chat model whose SDK clients are wrapped clients;
the caller's model is left as it was. Everything LangChain does (tools,
structured output, streaming, callbacks) goes through the SDK client as
before, so it goes through thrifty's pipeline and into the ledger.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from thrifty.middleware.engine import Engine


def wrap_langchain(model: Any, engine: Engine, wrap_client: Any) -> Any:
    module = type(model).__module__.split(".")[0]
    if module == "langchain_openai":
        copy = model.model_copy()
        root = wrap_client(model.root_client, engine=engine) if model.root_client is not None else None
        aroot = wrap_client(model.root_async_client, engine=engine) if model.root_async_client is not None else None
        copy.root_client = root
        copy.client = root.chat.completions if root is not None else None
        copy.root_async_client = aroot
        copy.async_client = aroot.chat.completions if aroot is not None else None
        return copy
    if module == "langchain_anthropic":
        copy = model.model_copy()
        # ChatAnthropic builds its SDK clients lazily in cached properties; seed the copy's cache
        copy.__dict__["_client"] = wrap_client(model._client, engine=engine)
        copy.__dict__["_async_client"] = wrap_client(model._async_client, engine=engine)
        return copy
    raise TypeError(f"not a LangChain chat model thrifty can wrap: {type(model).__qualname__}")


def is_langchain_model(obj: Any) -> bool:
    return type(obj).__module__.split(".")[0] in ("langchain_openai", "langchain_anthropic") and hasattr(
        obj, "model_copy"
    )
