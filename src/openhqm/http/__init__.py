"""The listener's HTTP API (FastAPI)."""
