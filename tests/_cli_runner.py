"""Runs a repo module as a CLI in a subprocess, the way a user would."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(module: str, *args: str, extra_env: dict | None = None,
               timeout: float = 600) -> subprocess.CompletedProcess:
  """``python -m module *args`` from the repo root on CPU; output captured.

  The persistent compilation cache is off unless `extra_env` turns it on
  (``FEDJAX_EXT_COMPILATION_CACHE``), so tests write nothing outside their
  temporary directories.
  """
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             FEDJAX_EXT_COMPILATION_CACHE='', **(extra_env or {}))
  return subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT,
                        env=env, capture_output=True, text=True,
                        timeout=timeout)
