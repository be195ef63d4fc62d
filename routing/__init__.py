"""MoE routing as sparse allocation: gates behind one interface, MoE layers, OT routing, trainer, benchmarks.

Every gate maps token features x (N, d) to a :class:`routing.gate.GateOutput` (combine weights (N, E),
dispatch mask, aux losses, metrics); every MoE layer in :mod:`routing.moe` takes any gate.
"""
