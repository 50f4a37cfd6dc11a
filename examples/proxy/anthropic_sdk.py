"""The official anthropic SDK, pointed at the thrifty proxy (its base URL is the proxy's root).

    .venv/bin/python examples/proxy/anthropic_sdk.py

Any model name works with either SDK: thrifty translates between the OpenAI
and Anthropic formats, streams included.
"""

import os

import anthropic

base = os.environ.get("THRIFTY_URL", "http://127.0.0.1:8787")
client = anthropic.Anthropic(base_url=base, api_key=os.environ.get("THRIFTY_KEY", "unused"))
question = [{"role": "user", "content": "Name one primary colour. Answer in one word."}]

message = client.messages.create(model="default", max_tokens=8, system="Answer briefly.", messages=question,
                                 metadata={"user_id": "example-user"})
print("reply:", message.content[0].text.strip(), "|", message.usage.input_tokens, "in,",
      message.usage.output_tokens, "out")

with client.messages.stream(model="default", max_tokens=8, messages=question) as stream:
    for text in stream.text_stream:
        print(text, end="", flush=True)
    final = stream.get_final_message()
print("\nstreamed:", final.usage.output_tokens, "tokens")

count = client.messages.count_tokens(model="default", messages=question)
print("count_tokens:", count.input_tokens)
