"""`python -m workbench ...` is `workbench ...`: the module torchrun starts (`torchrun --nproc-per-node N -m workbench sae train ...`).

The one module of the core that imports the front door: an entry point, not a layer (tests/test_layers.py
exempts this file by name and checks it imports nothing else of ours).
"""

import workbench.threads  # noqa: F401 - first: the OpenMP wait policy must be set before torch loads

import sys

from cli.main import main

sys.exit(main())
