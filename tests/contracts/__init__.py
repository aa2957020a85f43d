"""Behaviour suites every implementation of a port must pass (run against each backend)."""
