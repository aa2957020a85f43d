"""`python -m orchestrator.cli ...`: the `orchestrator` command (tests start workers so)."""

from orchestrator.cli import main

raise SystemExit(main())
