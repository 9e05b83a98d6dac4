"""Batches of requests and the threads that run them, for any callable; no MLflow."""
