-- Chat completions for a model served by an Anthropic channel: the upstream streams Anthropic
-- events, ringway converts each into a chat.completion.chunk.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-lab-client-7f3a9c2e5b8d4f1a6e0c9b7d3a5f8e2c"
wrk.body = '{"model":"sse-claude","stream":true,"max_tokens":64,"messages":[{"role":"user","content":"Count to sixty-four."}]}'
