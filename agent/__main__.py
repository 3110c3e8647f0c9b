"""`python -m agent` is the `aupguard` command."""

from agent.cli import main

raise SystemExit(main())
