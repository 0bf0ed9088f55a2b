"""A sweep through submitit on a real single-node Slurm (Debian's slurm-wlm and munge, started
here on localhost and stopped after): its results equal a local run of the same sweep, and a
preempted job is requeued and resumes from its checkpoint."""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import sparse_dqn as sd
from study import profiles, store, sweep as sweeps
from conftest import skip_unless_installed

DAEMONS = ["munged", "mungekey", "slurmctld", "slurmd", "sbatch", "sinfo"]
MODULE = str(Path(sd.__file__))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    missing = [d for d in DAEMONS if shutil.which(d) is None and not Path("/usr/sbin", d).exists()]
    skip_unless_installed(missing and f"Slurm ({', '.join(missing)})", "apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("starting slurmd needs root")
    root = tmp_path_factory.mktemp("slurm")
    munge = Path(tempfile.mkdtemp(prefix="sparse-dqn-munge-"))  # pytest's tree is closed to the munge user
    key = munge / "munge.key"
    subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True)
    shutil.chown(munge, "munge", "munge")
    shutil.chown(key, "munge", "munge")
    sock = munge / "munge.socket"
    subprocess.run(["runuser", "-u", "munge", "--", "munged", f"--key-file={key}", f"--socket={sock}",
                    f"--pid-file={munge / 'munged.pid'}", f"--log-file={munge / 'munged.log'}",
                    f"--seed-file={munge / 'munged.seed'}", "--force"], check=True)
    host = socket.gethostname().split(".")[0]
    for d in ("state", "spool"):
        (root / d).mkdir()
    conf = root / "slurm.conf"
    conf.write_text(f"""ClusterName=sdtest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={sock},cred_expire=10
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
StateSaveLocation={root / 'state'}
SlurmdSpoolDir={root / 'spool'}
SlurmctldPidFile={root / 'slurmctld.pid'}
SlurmdPidFile={root / 'slurmd.pid'}
SlurmctldLogFile={root / 'slurmctld.log'}
SlurmdLogFile={root / 'slurmd.log'}
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={host} CPUs={os.cpu_count()} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    env = dict(os.environ, SLURM_CONF=str(conf))
    daemons = [subprocess.Popen([d, "-D", "-f", str(conf)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.STDOUT) for d in ("/usr/sbin/slurmctld", "/usr/sbin/slurmd")]
    try:
        deadline = time.monotonic() + 60
        while True:
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True).stdout.strip()
            if state == "idle":
                break
            assert time.monotonic() < deadline, f"Slurm did not come up (node state {state!r}): " + \
                (root / "slurmctld.log").read_text()[-2000:]
            time.sleep(0.5)
        yield env
    finally:
        for d in daemons:
            d.terminate()
            d.wait(timeout=30)
        pid = (munge / "munged.pid").read_text().strip() if (munge / "munged.pid").exists() else None
        if pid:
            subprocess.run(["kill", pid])
        shutil.rmtree(munge, ignore_errors=True)


def test_a_smoke_sweep_on_slurm_equals_the_same_sweep_run_locally(slurm, tmp_path):
    common = ["sweep", "--profile", "smoke", "--envs", "breakout", "--max-agents", "8", "--no-progress"]
    proc = subprocess.run([sys.executable, MODULE, *common, "--out", str(tmp_path / "slurm"), "--executor", "slurm",
                           "--slurm-time-min", "20", "--slurm-cpus", "2"],
                          env=slurm, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    local = subprocess.run([sys.executable, MODULE, *common, "--out", str(tmp_path / "local")],
                           capture_output=True, text=True, timeout=900)
    assert local.returncode == 0, local.stderr[-3000:]
    on_slurm, here = (store.load_results(tmp_path / d) for d in ("slurm", "local"))
    assert len(here) > 0 and len(on_slurm) == len(here)
    runs = len(profiles.profile_runs("smoke", ["breakout"]))
    assert on_slurm["key"].nunique() * 1 == here["key"].nunique()
    assert len(list((tmp_path / "slurm").glob("*/seed_*.json"))) == runs
    cols = ["key", "seed", "episode", "frame", "return"]
    assert on_slurm.sort_values(cols)[cols].reset_index(drop=True).equals(here.sort_values(cols)[cols].reset_index(drop=True))


def test_a_preempted_job_is_requeued_and_resumes_from_its_checkpoint(slurm, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", slurm["SLURM_CONF"])
    population = [(profiles.profile_config("smoke", env="breakout", arch=a, frames=4_000, checkpoint_every=500), s)
                  for a in ("spatial", "dense") for s in (0, 1)]
    out = tmp_path / "slurm"
    ex = sweeps.slurm_executor(out, timeout_min=20, cpus_per_task=2)
    job = ex.submit(sweeps.SweepJob(population, str(out)))
    checkpoints = out / ".checkpoints"
    deadline = time.monotonic() + 600
    while not list(checkpoints.glob("[!.]*.pt")):  # a finished checkpoint, not a temporary
        assert time.monotonic() < deadline and not job.done(), "no checkpoint before the job ended"
        time.sleep(0.5)
    job._interrupt()  # what Slurm does on preemption: SIGTERM, then submitit's signal
    # Slurm holds a requeued job back until its old credential expires (cred_expire, 10 s here):
    # started sooner, slurmd refuses it as "Job credential revoked" and the job dies unfinished.
    assert job.result() == len(population)
    stdout = "\n".join(p.read_text() for p in (out / ".submitit").glob("*_log.err"))
    assert "requeued" in stdout.lower() or "requeue" in stdout.lower(), stdout[-2000:]
    resumed = [store.load_run(out, c, s) for c, s in population]
    assert all(r is not None and r.resumed_at for r in resumed)
    uninterrupted = sd.train_runs(population, None, progress=False)
    for a, b in zip(resumed, uninterrupted):
        assert (a.episode_frames, a.episode_returns) == (b.episode_frames, b.episode_returns)


def test_a_jobs_scontrol_outlives_the_sigterm_of_its_own_requeue(tmp_path):
    """submitit's requeue runs scontrol inside the job, and Slurm's SIGTERM to the job may reach it
    the moment it starts: a child that a SweepJob starts, as submitit starts scontrol, survives a
    SIGTERM sent as soon as it exists. Needs no Slurm: the child is a stand-in."""
    code = f"""
import os, signal, subprocess, sys
sys.path[:0] = [{str(Path(MODULE).parent)!r}]
from study import profiles, sweep
sweep.SweepJob([(profiles.profile_config("smoke", env="breakout", arch="dense", frames=200), 0)], {str(tmp_path)!r})()
child = subprocess.Popen(["sh", "-c", "sleep 1; echo requeue"], stdout=subprocess.PIPE, text=True)
os.kill(child.pid, signal.SIGTERM)
print(child.communicate(timeout=10)[0], end="")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == "requeue\n"

