"""Shared fixtures live in plugin modules so each area owns its own file."""

pytest_plugins = ["tests.fixtures_llm", "tests.fixtures_redis", "tests.fixtures_api"]
