"""Offline stand-ins for external services, shared by tests and benchmarks."""
