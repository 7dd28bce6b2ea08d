"""The Subscriptions REST API, compatible with Open Dental's resource (FastAPI on uvicorn)."""
