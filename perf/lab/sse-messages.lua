-- Anthropic Messages; the model (SSE_MODEL: sse-claude, an Anthropic channel, relayed as is; or
-- sse-mini, an OpenAI-compatible channel, each chunk converted into Anthropic events).
local model = os.getenv("SSE_MODEL") or "sse-claude"
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["x-api-key"] = "sk-lab-client-7f3a9c2e5b8d4f1a6e0c9b7d3a5f8e2c"
wrk.headers["anthropic-version"] = "2023-06-01"
wrk.body = '{"model":"' .. model .. '","stream":true,"max_tokens":64,"messages":[{"role":"user","content":"Count to sixty-four."}]}'
