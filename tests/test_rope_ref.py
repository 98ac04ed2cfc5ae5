#!/usr/bin/env python3
"""Self-checks of the independent NumPy RoPE reference behind tests/fixtures/rope (closed forms,
integrator convergence, STRING's two-pass merge, fixture equalities): tests/rope_ref/check_rope_ref.py.
Ends with "check_rope_ref: N passed, N failed"."""
import os
import runpy
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.argv = [os.path.join(here, "rope_ref", "check_rope_ref.py")] + sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
