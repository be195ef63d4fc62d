"""Threads on a shared machine: a passive OpenMP wait policy, set before torch is imported.

torch's OpenMP threads (libgomp) spin while they wait for work. When another process wants the same
cores, the spinning threads and the other process slow each other down many times over (measured in
docs/threads.md). ``OMP_WAIT_POLICY=PASSIVE`` makes waiting threads sleep instead; libgomp reads it
once, when torch loads it, so every entry point (the CLI, the app, the bench scripts) imports this
module before anything imports torch. A value the user set is kept.
"""

from __future__ import annotations

import os
import sys
import warnings

VARIABLE = "OMP_WAIT_POLICY"
POLICY = "PASSIVE"


def use_passive_wait() -> str:
    """Set OMP_WAIT_POLICY=PASSIVE unless it is set already; returns the policy in effect.

    Warns when torch was imported first (then the setting comes too late for this process).
    """
    if VARIABLE in os.environ:
        return os.environ[VARIABLE]
    if "torch" in sys.modules:
        warnings.warn(f"torch was imported before workbench.threads: {VARIABLE}={POLICY} does not apply to this "
                      f"process; import workbench.threads first or set {VARIABLE} in the environment", stacklevel=2)
    os.environ[VARIABLE] = POLICY
    return POLICY


use_passive_wait()  # on import: entry points do `import workbench.threads` as their first import
