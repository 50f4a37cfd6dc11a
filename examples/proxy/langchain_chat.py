"""LangChain chat models (langchain-openai, langchain-anthropic), pointed at the thrifty proxy.

    .venv/bin/python examples/proxy/langchain_chat.py
"""

import os

from langchain_anthropic import ChatAnthropic
from langchain_openai import ChatOpenAI

base = os.environ.get("THRIFTY_URL", "http://127.0.0.1:8787")
key = os.environ.get("THRIFTY_KEY", "unused")

gpt_style = ChatOpenAI(base_url=f"{base}/v1", api_key=key, model="default", max_tokens=8, temperature=0,
                       default_headers={"x-thrifty-project": "langchain-example"})
print("ChatOpenAI:", gpt_style.invoke("Name one primary colour. Answer in one word.").content.strip())

claude_style = ChatAnthropic(base_url=base, api_key=key, model="default", max_tokens=8)
print("ChatAnthropic stream:", end=" ")
for chunk in claude_style.stream("Name one primary colour. Answer in one word."):
    print(chunk.content if isinstance(chunk.content, str) else "", end="", flush=True)
print()
