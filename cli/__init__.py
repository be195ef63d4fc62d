"""The front door: the `workbench` command (``cli.main``), one module per command group, and the demo.

The top layer: it imports `workbench`, `sae`, `routing` and `evals` (lazily, so ``--help`` stays fast);
nothing below imports it.
"""
