"""Several processes, one run (``jax.distributed`` on localhost, Gloo
collectives on CPU, started by ``launch/cluster/local.py``): the host
collectives are exact, two processes train as one (bank refreshes and
cluster indexes included), and a killed or preempted job resumes."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import child_process  # tests/child_process.py

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LAUNCHER = os.path.join(ROOT, "launch", "cluster", "local.py")
sys.path.insert(0, os.path.join(ROOT, "launch", "cluster"))

import local as local_launcher  # pylint: disable=g-import-not-at-top,wrong-import-position


def _env():
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)        # one device per process
  return env


def _json_lines(text: str) -> dict[int, dict]:
  """``{process: record}`` of the launcher's prefixed JSON lines."""
  out = {}
  for line in text.splitlines():
    if line.startswith("[") and "] {" in line:
      i, _, rest = line.partition("] ")
      out[int(i[1:])] = json.loads(rest)
  return out


def _launch(args, timeout=900, **kw):
  return subprocess.run([sys.executable, LAUNCHER, "--num_processes=2", "--"] + args,
                        capture_output=True, text=True, env=_env(), timeout=timeout,
                        **kw)


# ---- The launcher on its own (no JAX) ---------------------------------------------


def test_each_process_gets_its_id_and_the_coordinator():
  env = local_launcher.process_env(1, 3, 4567, devices=2, gpus=1,
                                   base={"XLA_FLAGS": "--xla_foo=1 "
                                         "--xla_force_host_platform_device_count=8"})
  assert env["DMLX_COORDINATOR_ADDRESS"] == "localhost:4567"
  assert (env["DMLX_NUM_PROCESSES"], env["DMLX_PROCESS_ID"]) == ("3", "1")
  assert env["XLA_FLAGS"] == "--xla_foo=1 --xla_force_host_platform_device_count=2"
  assert env["CUDA_VISIBLE_DEVICES"] == "1"


def test_a_failing_process_stops_the_others_and_its_code_is_returned():
  """Process 1 fails at once; process 0 would wait a minute for it (as a
  process blocked in a collective would): the launcher stops it and returns
  process 1's code."""
  script = ("import os, sys, time\n"
            "if os.environ['DMLX_PROCESS_ID'] == '1': sys.exit(3)\n"
            "time.sleep(60)\n")
  t0 = time.time()
  out = _launch([sys.executable, "-c", script], timeout=120)
  assert out.returncode == 3, out.stdout
  assert time.time() - t0 < 30


def test_bad_start_up_settings_name_the_value():
  from dmlx.train import distributed  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="'sometimes'"):
    distributed.initialize("sometimes")
  with pytest.raises(ValueError, match="num_processes"):
    distributed.initialize("on", coordinator_address="localhost:1")
  with pytest.raises(ValueError, match="process_id 2"):
    distributed.initialize("on", coordinator_address="localhost:1",
                           num_processes=2, process_id=2)
  assert distributed.cluster_detected({"SLURM_NTASKS": "4"}) == "slurm"
  assert distributed.cluster_detected({"SLURM_NTASKS": "1"}) is None
  assert distributed.cluster_detected({"OMPI_COMM_WORLD_SIZE": "2"}) == "openmpi"
  assert not distributed.initialize("auto")     # nothing set: one process


# ---- Real processes -----------------------------------------------------------


def test_host_collectives_are_exact_across_two_processes():
  """The step sees the global batch; features gathered onto every process;
  process 0's host state (float64, int64 beyond 2^32, strings) arrives on
  process 1 bit for bit; replicated state is on every device."""
  out = _launch([sys.executable, os.path.join(HERE, "mp_collectives_check.py")],
                timeout=300)
  assert out.returncode == 0, out.stdout[-3000:]
  seen = _json_lines(out.stdout)
  assert sorted(seen) == [0, 1], out.stdout[-2000:]
  for record in seen.values():
    assert record["started"] and record["processes"] == 2
    assert record["sum"] == record["expected_sum"]
    assert record["gathered_equal"]
    assert record["bank_dtype"] == "float64"
    assert record["bank"] == [[0.1, 0.1]] * 3        # process 0's, exactly
    assert record["ids"] == [0, 1, 2] and record["name"] == "p0"
    assert record["replicated"] == [1.5, 1.5, 1.5]


def _train_alone(name, workdir):
  return child_process.last_json(
      [os.path.join(HERE, "mp_train_check.py"), name, str(workdir)], env=_env(),
      timeout=900)


def _variables(workdir):
  from dmlx import inference  # pylint: disable=g-import-not-at-top
  return jax.tree_util.tree_flatten_with_path(inference.read_workdir(str(workdir)).variables)[0]


def _worst_difference(a_dir, b_dir, skip=()):
  a, b = _variables(a_dir), _variables(b_dir)
  diffs = {jax.tree_util.keystr(p): float(np.max(np.abs(x - y)))
           for (p, x), (_, y) in zip(a, b) if jax.tree_util.keystr(p) not in skip}
  scale = max(float(np.max(np.abs(x))) for _, x in a)
  worst = max(diffs, key=diffs.get)
  return worst, diffs[worst], scale


@pytest.mark.slow
@pytest.mark.parametrize("name", ["nngk", "magnet"])
def test_two_processes_train_like_one(name, tmp_path):
  """Three epochs of a tiny config, a refresh at each (NNGK's centre bank,
  Magnet's cluster index with its loss cache synced every 4 steps): two
  processes of one device each end with the network of one process on one
  device over the same global batches, and report the same metrics, also
  when the finished run is restored and evaluated again (``launch/evaluate.py``)."""
  out = _launch([sys.executable, os.path.join(HERE, "mp_train_check.py"), name,
                 str(tmp_path / "two")])
  assert out.returncode == 0, out.stdout[-3000:]
  two = _json_lines(out.stdout)
  one = _train_alone(name, tmp_path / "one")
  assert two[0]["processes"] == 2 and one["processes"] == 1
  assert two[0]["test"] == two[1]["test"] and two[0]["method"] == two[1]["method"]
  assert two[0]["evaluated"] == two[1]["evaluated"] == two[0]["test"]   # launch/evaluate.py
  # As on 8 devices: Magnet's embedding bias gets a zero gradient up to
  # rounding, which Adam turns into steps of arbitrary sign; it cannot change
  # a distance (test_data_parallel.py).
  skip = {"['params']['embedding']['bias']"} if name == "magnet" else set()
  worst, diff, scale = _worst_difference(tmp_path / "one", tmp_path / "two", skip)
  assert diff <= 1e-4 * scale, (worst, diff, scale)
  for key, value in one["test"].items():
    assert two[0]["test"][key] == pytest.approx(value, abs=1e-6), key
  for key, value in one["method"].items():
    assert two[0]["method"][key] == pytest.approx(value, abs=1e-6), key
  assert os.path.exists(tmp_path / "two" / "final_metrics.json")
  # Only process 0 wrote the logs: one copy of each line.
  with open(tmp_path / "two" / "train.log") as f:
    assert sum("restored" in l or "refresh took" in l for l in f) == 3


def _wait_for_checkpoint(workdir, step, proc, timeout=600):
  t0 = time.time()
  while time.time() - t0 < timeout:
    if os.path.isdir(os.path.join(workdir, "checkpoints", str(step))):
      return
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    time.sleep(0.5)
  raise TimeoutError(f"no checkpoint {step} in {workdir}")


@pytest.mark.slow
def test_a_killed_and_a_preempted_job_resume_where_they_stopped(tmp_path):
  """SIGKILL of the whole job after its first checkpoint, restarted; then
  SIGTERM (the preemption notice) to the launcher: both processes
  checkpoint one agreed step, exit 75, and the same command finishes. The
  final network equals an uninterrupted two-process run."""
  # 10 epochs of 3 steps: the run must still be going when the preemption
  # notice reaches both processes (3 epochs ended first on a fast machine).
  command = [sys.executable, LAUNCHER, "--num_processes=2", "--", sys.executable,
             os.path.join(HERE, "mp_train_check.py"), "nngk", str(tmp_path / "drill"),
             "0", "10"]
  proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=_env(), start_new_session=True)
  _wait_for_checkpoint(tmp_path / "drill", 2, proc)
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=_env(), start_new_session=True)
  _wait_for_checkpoint(tmp_path / "drill", 4, proc)
  proc.send_signal(signal.SIGTERM)
  log, _ = proc.communicate(timeout=600)
  assert proc.returncode == 75, log[-3000:]
  seen = _json_lines(log)
  assert seen[0]["preempted"] == seen[1]["preempted"] >= 4, log[-2000:]
  assert "restored step" in log
  out = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=900)
  assert out.returncode == 0, out.stdout[-3000:]
  assert f"restored step {seen[0]['preempted']}" in out.stdout
  reference = _launch([sys.executable, os.path.join(HERE, "mp_train_check.py"), "nngk",
                       str(tmp_path / "uninterrupted"), "0", "10"])
  assert reference.returncode == 0, reference.stdout[-3000:]
  worst, diff, scale = _worst_difference(tmp_path / "uninterrupted", tmp_path / "drill")
  assert diff <= 1e-6 * scale, (worst, diff, scale)


# ---- The cluster scripts, against stand-ins for srun, scontrol and gcloud ---------


def _stand_ins(tmp_path, srun_code=0):
  """A bin/ folder whose srun, scontrol and gcloud log their arguments."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  log = tmp_path / "calls.log"
  for name, code in (("srun", srun_code), ("scontrol", 0), ("gcloud", 0)):
    path = bin_dir / name
    path.write_text("#!/bin/bash\n"
                    f"printf '%s' {name} >> {log}\n"
                    f"for a in \"$@\"; do printf ' <%s>' \"$a\" >> {log}; done\n"
                    f"echo >> {log}\nexit {code}\n")
    path.chmod(0o755)
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="77",
             SLURM_SUBMIT_DIR=ROOT)
  return env, log


@pytest.mark.parametrize("srun_code", [0, 75, 1])
def test_the_slurm_script_starts_every_task_and_requeues_a_preempted_job(tmp_path, srun_code):
  env, log = _stand_ins(tmp_path, srun_code)
  out = subprocess.run(["bash", os.path.join(ROOT, "launch", "cluster", "slurm.sbatch"),
                        "configs/default.py", "/shared/run", "--config.train.epochs=2"],
                       capture_output=True, text=True, env=env, timeout=60)
  assert out.returncode == srun_code, out.stderr
  calls = log.read_text().splitlines()
  assert calls[0] == ("srun <--kill-on-bad-exit=1> <python> <launch/train.py> "
                      "<--config=configs/default.py> <--workdir=/shared/run> "
                      "<--distributed=on> <--config.train.epochs=2>")
  assert calls[1:] == (["scontrol <requeue> <77>"] if srun_code == 75 else [])


def test_the_tpu_script_runs_one_command_on_every_worker(tmp_path):
  env, log = _stand_ins(tmp_path)
  script = os.path.join(ROOT, "launch", "cluster", "tpu_vm.sh")
  out = subprocess.run(["bash", script, "my-tpu", "us-central2-b",
                        "configs/real_data.py:dataset=cub,method=nngk", "/mnt/runs/a b",
                        "--config.seed=3"], capture_output=True, text=True, env=env,
                       timeout=60)
  assert out.returncode == 0, out.stderr
  call = " ".join(log.read_text().split())     # the command spans lines
  assert call.startswith("gcloud <compute> <tpus> <tpu-vm> <ssh> <my-tpu> "
                         "<--zone=us-central2-b> <--worker=all> <--command=")
  command = call.partition("--command=")[2]
  assert ("cd dmlx && python launch/train.py "
          "--config=configs/real_data.py:dataset=cub\\,method=nngk") in command
  assert "--workdir=/mnt/runs/a\\ b --distributed=on --config.seed=3" in command
