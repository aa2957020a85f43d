"""SimpleLLMFunc programs, written against SimpleLLMFunc, that test_port_check.py runs
against `orchestrator` after renaming only the import (`SimpleLLMFunc` -> `orchestrator`)."""
