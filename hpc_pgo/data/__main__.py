"""`python -m hpc_pgo.data`: the `pgo-shards` command line (hpc_pgo.data.cli)."""

import sys

from hpc_pgo.data.cli import main

sys.exit(main())
