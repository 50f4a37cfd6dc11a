"""The official openai SDK, pointed at the thrifty proxy.

    thrifty serve &                      # or: make serve
    .venv/bin/python examples/proxy/openai_sdk.py

``THRIFTY_URL`` is the proxy's address (default http://127.0.0.1:8787). The
model ``default`` is the embedded local model on a fresh machine; any
``provider/model`` you configured works the same way. The API key is a
placeholder unless the proxy has virtual keys (then it is one of those).
"""

import os

import openai

base = os.environ.get("THRIFTY_URL", "http://127.0.0.1:8787")
client = openai.OpenAI(base_url=f"{base}/v1", api_key=os.environ.get("THRIFTY_KEY", "unused"))
question = [{"role": "user", "content": "Name one primary colour. Answer in one word."}]

# a plain call; the raw response shows thrifty's headers
raw = client.chat.completions.with_raw_response.create(
    model="default", messages=question, max_tokens=8, temperature=0,
    extra_headers={"x-thrifty-tags": "example,docs"},
)
reply = raw.parse()
print("reply:", reply.choices[0].message.content.strip())
print("cost USD:", raw.headers["x-thrifty-cost-usd"], "| request id:", raw.headers["x-thrifty-request-id"])

# a stream; its final chunk carries the same facts in a `thrifty` field
print("stream:", end=" ")
for chunk in client.chat.completions.create(model="default", messages=question, max_tokens=8, stream=True,
                                            stream_options={"include_usage": True}):
    if chunk.choices:
        print(chunk.choices[0].delta.content or "", end="", flush=True)
    if chunk.usage:
        print(f"\nusage: {chunk.usage.prompt_tokens} in, {chunk.usage.completion_tokens} out;",
              "thrifty:", chunk.model_extra["thrifty"])
