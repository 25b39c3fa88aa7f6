"""8 simulated CPU devices give the same loss and gradients as 1 device."""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.parametrize("loss_name", [
    "triplet_semihard",
    pytest.param("contrastive", marks=pytest.mark.slow),
    pytest.param("margin", marks=pytest.mark.slow)])
def test_eight_devices_match_one(loss_name):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, os.path.join(HERE, "dp_check.py"), loss_name],
                       capture_output=True, text=True, env=env, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["devices_used"] == 8
  assert result["loss1"] > 0
  assert abs(result["loss1"] - result["loss8"]) <= 1e-5 * max(1.0, abs(result["loss1"]))
  assert result["max_grad_diff"] <= 1e-4 * max(result["grad_scale"], 1e-3), result
