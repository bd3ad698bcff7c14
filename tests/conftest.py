from __future__ import annotations

import os

# MuJoCo and JAX should not fight pytest for the 2 cores, nor grab GPU memory where one exists.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
