#!/bin/sh
# curl against the thrifty proxy: the OpenAI and Anthropic wires, a stream, the count, the model list.
#
#     sh examples/proxy/curl.sh
set -eu
BASE="${THRIFTY_URL:-http://127.0.0.1:8787}"
KEY="${THRIFTY_KEY:-unused}"

echo "== POST /v1/chat/completions (headers and body)"
curl -sS -D - "$BASE/v1/chat/completions" \
  -H "authorization: Bearer $KEY" -H "content-type: application/json" \
  -H 'x-thrifty-options: {"tags": ["curl"], "project": "docs"}' \
  -d '{"model": "default", "max_tokens": 8, "messages": [{"role": "user", "content": "Say hello."}]}'
echo

echo "== POST /v1/messages, streamed"
curl -sS -N "$BASE/v1/messages" \
  -H "x-api-key: $KEY" -H "content-type: application/json" \
  -d '{"model": "default", "max_tokens": 8, "stream": true, "messages": [{"role": "user", "content": "Say hello."}]}'
echo

echo "== POST /v1/messages/count_tokens"
curl -sS "$BASE/v1/messages/count_tokens" -H "x-api-key: $KEY" -H "content-type: application/json" \
  -d '{"model": "default", "messages": [{"role": "user", "content": "Say hello."}]}'
echo

echo "== GET /v1/models"
curl -sS "$BASE/v1/models" -H "authorization: Bearer $KEY"
echo
