"""Helpers shared by the test suites: model builders, server processes, V2 requests."""
