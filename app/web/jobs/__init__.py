"""Asynchronous transcription jobs: a durable store, the runner that feeds the model worker, the /v1/jobs API.

Jobs share the worker's batches with synchronous requests at a lower priority; the store makes them survive restarts.
"""
