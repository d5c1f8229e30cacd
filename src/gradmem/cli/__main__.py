"""`python -m gradmem.cli ...`: the same command line as `gradmem ...` (gradmem.cli.main)."""

from gradmem.cli.main import main

raise SystemExit(main())
