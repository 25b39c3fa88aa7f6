"""A Python child process whose last line of output is a JSON record."""
from __future__ import annotations

import json
import subprocess
import sys
from typing import Mapping, Optional, Sequence


def last_json(args: Sequence[str], *, env: Mapping[str, str],
              timeout: float = 300, cwd: Optional[str] = None) -> dict:
  """Runs ``python *args`` in a fresh process (e.g. with its own XLA_FLAGS)
  and returns its last stdout line as JSON; fails with its stderr's tail if
  it exits non-zero."""
  out = subprocess.run([sys.executable, *args], env=dict(env), cwd=cwd,
                       capture_output=True, text=True, timeout=timeout)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])
