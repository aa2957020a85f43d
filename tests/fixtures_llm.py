"""Fixtures for the scripted model (filled in with orchestrator.mock_llm)."""
