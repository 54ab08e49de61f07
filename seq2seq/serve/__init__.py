"""`translate serve`: the HTTP translation service (FastAPI + uvicorn), its dynamic batcher and
the web page it serves. Needs the `serve` extra: pip install -e '.[serve]'."""
