"""`python -m orchestrator.bench ROLE ...`: the bench's helper processes."""

from orchestrator.bench.children import main

raise SystemExit(main())
