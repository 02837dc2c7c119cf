"""`python -m aruntime`: the same as the `aruntime` command."""

from __future__ import annotations

from aruntime._cli import main

raise SystemExit(main())
