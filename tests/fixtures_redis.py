"""Fixtures for real Redis and fakeredis (filled in with the Redis adapters)."""
