"""Run code in a fresh Python under Triton's interpreter (TRITON_INTERPRET=1 is read when Triton is
imported, hence a new process): how the Triton kernels are checked on a machine without a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Triton's interpreter turns a scalar into a one-element array and reads loop bounds with int(array),
# which NumPy 2 refuses for arrays of one dimension: read the element instead (interpreter only).
PREAMBLE = """
import triton.runtime.interpreter as _I
_orig = _I._patch_lang_tensor
def _patch(tensor, scope):
    _orig(tensor, scope)
    scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))
_I._patch_lang_tensor = _patch
"""


def interpret(code: str, **env: str) -> str:
    """stdout of `code` (dedented) run by the interpreter with the repo importable; fails on a non-zero exit."""
    full_env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": ROOT, **env}
    p = subprocess.run([sys.executable, "-c", PREAMBLE + textwrap.dedent(code)], env=full_env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout
