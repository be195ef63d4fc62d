"""The front door: the `workbench` command (``cli.main``), one module per command group, and the demo.

The top layer: it imports `workbench`, `sae`, `routing` and `evals` (lazily, so ``--help`` stays fast);
nothing below imports it. Importing it first sets a passive OpenMP wait policy (workbench.threads)
before anything loads torch.
"""

import workbench.threads  # noqa: F401 - first: OMP_WAIT_POLICY=PASSIVE before torch loads (docs/threads.md)
