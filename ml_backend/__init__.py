"""Bulk Shift's Label Studio ML backend (label-studio-ml 1.0.9) and its RQ worker.

Start the HTTP server with ``python -m ml_backend --port 9090`` and the worker with
``python -m ml_backend.worker``; both read the environment described in
``docs/ARCHITECTURE.md`` ("Configuration").
"""
