"""`fvlm serve`: an OpenAI-compatible HTTP API and a demo page (FastAPI + uvicorn: the optional `serve` extra).

    protocol   the request/response shapes of POST /v1/chat/completions (parsing, checks, 4xx ApiError, chunks)
    fetch      media of a request: data: URIs, http(s) URLs (size cap, timeout), local paths when allowed
    engine     the one thread that runs the model: a queue, batching of compatible requests, token streaming
    app        the FastAPI app: /v1/chat/completions, /v1/models, /health, /v1/compare (demo), / (the page)

Only `fvlm serve` imports this package; nothing else in fvlm needs FastAPI.
"""
