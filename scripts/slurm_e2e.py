"""End-to-end test on a real SLURM: a sweep array through `launcher=slurm_cpu`, preempted.

Starts a private single-node SLURM from Debian's packages (slurm-wlm 22.05, munge) in a
temporary directory: its own munged socket and key, slurmctld and slurmd on free ports, no
accounting. The node has two partitions on the same CPUs: `low` (the default, PreemptMode=
REQUEUE) and `high` (a higher PriorityTier), with PreemptType=preempt/partition_prio and
JobRequeue=1. Then:

1. `prune-run -m launcher=slurm_cpu experiment=quickstart method=ft,lrw ...` submits a 2-job
   array to `low` and waits for it, as a user would;
2. once a run is inside the retraining of level 1, a job for the whole node is submitted to
   `high`: SLURM preempts the running array jobs for real. With the default GraceTime=0 they
   get SIGTERM (then SIGKILL after KillWait) and SLURM requeues them itself; with `--grace S`
   they get SIGTERM and S seconds, and requeue themselves through submitit; with `--grace S
   --user-signal` (SlurmctldParameters=preempt_send_user_signal) they get SIGUSR2 instead.
   Meanwhile the reference runs: the same sweep without SLURM (Hydra's basic launcher);
3. checks: the submitting prune-run exits 0; both array jobs completed, a preempted one was
   requeued and logged "resuming at step" inside an epoch (it continued from the optimizer
   step where it was stopped, not from an epoch end); every run's rows, checkpoints and LR
   logs equal the reference's; the sweep's report.csv was written.

The daemons are stopped at the end, whatever happened; the directory is removed unless the
test failed, --keep or --dir is given. Exit status 0 on success, 1 on a failed check, 2 when SLURM
cannot be started here (not installed: `--install`, or `apt-get install slurm-wlm munge`).

    uv run python scripts/slurm_e2e.py                     # 2-3 min on 2 cores
    uv run python scripts/slurm_e2e.py --install           # apt-get install slurm-wlm munge first
    uv run python scripts/slurm_e2e.py --grace 60 --user-signal --keep
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")
# A sweep of seconds: LeNet-300-100 on the bundled digits, 2 methods sharing one dense model,
# one pruning level. 40 epochs per phase (~23 steps each) leave a few seconds in level 1's
# retraining to preempt the jobs in.
EPOCHS = 40
SWEEP = [
    "experiment=quickstart",
    "method=ft,lrw",
    "seed=0",
    "pruning.levels=1",
    f"train.epochs={EPOCHS}",
    "runtime.threads=1",
    "runtime.progress=false",
]
COMPARED = ("level", "acc", "acc_after_prune", "density", "nonzero_params", "images_seen")


class Failed(Exception):
    """A check failed (exit 1)."""


class Unavailable(Exception):
    """SLURM cannot be started here (exit 2)."""


def log(msg: str) -> None:
    print(f"[slurm-e2e {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def install() -> None:
    log("apt-get install slurm-wlm munge")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"], check=True, env=env)


class Cluster:
    """munged + slurmctld + slurmd for one node, everything under ``root``."""

    def __init__(self, root: Path, grace: int, user_signal: bool) -> None:
        self.root = root
        self.grace = grace
        self.user_signal = user_signal
        self.procs: dict[str, subprocess.Popen] = {}
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.node = socket.gethostname().split(".")[0]

    def write_conf(self) -> None:
        r = self.root
        user = pwd.getpwuid(os.getuid()).pw_name
        cpus = os.cpu_count() or 1
        mem_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        params = "SlurmctldParameters=preempt_send_user_signal" if self.user_signal else ""
        self.conf.write_text(
            f"""\
ClusterName=prunee2e
SlurmctldHost={self.node}(127.0.0.1)
SlurmUser={user}
SlurmdUser={user}
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
CredType=cred/munge
# a requeued job may start again after cred_expire seconds (default 120)
AuthInfo=socket={r}/munge/munge.sock,cred_expire=5
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MinJobAge=3600
# look at pending jobs every 2 s (default 60): a requeued job starts as soon as it may
SchedulerParameters=sched_interval=2,bf_interval=2
# what the README asks of a cluster: requeue, preemption by requeue, SIGTERM then KillWait
JobRequeue=1
KillWait=30
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
{params}
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=low Nodes={self.node} Default=YES PriorityTier=1 PreemptMode=REQUEUE GraceTime={self.grace} MaxTime=INFINITE State=UP
PartitionName=high Nodes={self.node} PriorityTier=2 PreemptMode=OFF MaxTime=INFINITE State=UP
"""
        )

    def start(self) -> None:
        missing = [d for d in DAEMONS if shutil.which(d) is None]
        if missing:
            raise Unavailable(
                f"not installed: {', '.join(missing)} (run with --install, or "
                "`apt-get install slurm-wlm munge`)"
            )
        r = self.root
        for d in ("munge", "state", "spool", "log"):
            (r / d).mkdir(parents=True, exist_ok=True)
        (r / "munge").chmod(0o755)  # munged wants its socket's directory searchable
        key = r / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self.write_conf()
        self._spawn(
            "munged",
            [
                "munged",
                "--foreground",
                "--force",
                f"--key-file={key}",
                f"--socket={r}/munge/munge.sock",
                f"--pid-file={r}/munge/munged.pid",
                f"--log-file={r}/log/munged.log",
                f"--seed-file={r}/munge/seed",
            ],
        )
        self._wait(lambda: (r / "munge" / "munge.sock").exists(), 20, "munged's socket")
        self._spawn("slurmctld", ["slurmctld", "-D", "-c"])
        self._spawn("slurmd", ["slurmd", "-D", "-N", self.node])
        self._wait(lambda: self.node_state() == "idle", 60, "the node to be idle")
        log(f"SLURM up: node {self.node}, {os.cpu_count()} CPUs, SLURM_CONF={self.conf}")

    def _spawn(self, name: str, argv: list[str]) -> None:
        out = open(self.root / "log" / f"{name}.out", "wb")  # noqa: SIM115 - kept open
        self.procs[name] = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )

    def _wait(self, ready, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise Unavailable(f"{dead[0]} exited; see {self.root}/log/{dead[0]}.out")
            if ready():
                return
            time.sleep(0.2)
        raise Unavailable(f"timed out waiting for {what}; logs in {self.root}/log")

    def run(self, *argv: str, check: bool = True) -> str:
        p = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=60)
        if check and p.returncode:
            raise Failed(f"{' '.join(argv)}: {p.stderr.strip() or p.stdout.strip()}")
        return p.stdout

    def node_state(self) -> str:
        return self.run("sinfo", "--noheader", "-n", self.node, "-o", "%t", check=False).strip()

    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld knows (MinJobAge keeps finished ones), one dict each."""
        out = self.run("scontrol", "-o", "show", "job", check=False)
        jobs = []
        for line in out.splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            if "JobId" in fields:
                jobs.append(fields)
        return jobs

    def stop(self) -> None:
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run("scancel", "--full", "--user", pwd.getpwuid(os.getuid()).pw_name, check=False)
            end = time.monotonic() + 40
            while time.monotonic() < end and self.run("squeue", "-h", check=False).strip():
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.get(name)
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        # job steps left by slurmd (slurmstepd and its tasks) carry our SLURM_CONF
        for pid in self.leftovers():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def leftovers(self) -> list[int]:
        mark = f"SLURM_CONF={self.conf}".encode()
        pids = []
        for env in Path("/proc").glob("[0-9]*/environ"):
            try:
                if mark in env.read_bytes().split(b"\0") and int(env.parent.name) != os.getpid():
                    pids.append(int(env.parent.name))
            except (OSError, ValueError):
                continue
        return pids


def prune_run_argv(*args: str) -> list[str]:
    exe = Path(sys.executable).parent / "prune-run"
    return [str(exe) if exe.exists() else "prune-run", "-m", *args]


def rows_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines() if line]


def runs_of(sweep: Path) -> dict[str, Path]:
    """The sweep's run directories by method."""
    runs = {}
    for results in sorted(sweep.rglob("results.jsonl")):
        runs[rows_of(results.parent)[0]["method"]] = results.parent
    return runs


def compare(ref: Path, run: Path) -> None:
    import torch

    a, b = rows_of(ref), rows_of(run)
    pick = [{k: r.get(k) for k in COMPARED} for r in a]
    if [{k: r.get(k) for k in COMPARED} for r in b] != pick:
        raise Failed(f"{run}: rows differ from the reference {ref}:\n{b}\n{a}")
    names = sorted(p.name for p in (ref / "checkpoints").iterdir())
    if sorted(p.name for p in (run / "checkpoints").iterdir()) != names:
        raise Failed(f"{run}: checkpoints {names} expected")

    def same(x, y) -> bool:
        """Bit-identical tensors in the same nesting (weights, or a pruner's {"masks": ...})."""
        if isinstance(x, torch.Tensor):
            return isinstance(y, torch.Tensor) and torch.equal(x, y)
        if isinstance(x, dict):
            return isinstance(y, dict) and x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
        if isinstance(x, list):
            return isinstance(y, list) and len(x) == len(y) and all(map(same, x, y))
        return x == y

    for name in names:
        x = torch.load(ref / "checkpoints" / name, weights_only=False)
        y = torch.load(run / "checkpoints" / name, weights_only=False)
        if not same(x, y):
            raise Failed(f"{run}: checkpoints/{name} differs from the reference")
    for lr in sorted(ref.glob("lr_level_*.csv")):
        if (run / lr.name).read_text() != lr.read_text():
            raise Failed(f"{run}: {lr.name} differs from the reference")


def in_level_1(sweep: Path) -> Path | None:
    """A run inside level 1's retraining: level 0 recorded, a training state saved."""
    for state in sweep.glob("*/*/train_state.pt"):
        results = state.parent / "results.jsonl"
        if results.exists() and len(results.read_text().splitlines()) == 1:
            return state.parent
    return None


def e2e(root: Path, cluster: Cluster, timeout: float) -> None:
    if cluster.grace == 0:  # SIGTERM; SLURM has requeued the job, which saves and exits
        expected_logs = ["terminated (SIGTERM): SLURM is ending job"]
    elif not cluster.user_signal:  # SIGTERM, the job keeps running: submitit requeues it
        expected_logs = ["Caught signal SIGTERM", "Requeued job"]
    else:  # SIGUSR2 (preempt_send_user_signal): submitit requeues it
        expected_logs = ["Caught signal SIGUSR2", "Requeued job"]
    env = {
        **cluster.env,
        "OMP_NUM_THREADS": "1",
        "PRUNE_CLI_DATA": str(root / "data"),
        "PYTHONUNBUFFERED": "1",
    }
    t0 = time.monotonic()
    sweep = root / "sweep"
    argv = prune_run_argv(
        "launcher=slurm_cpu",
        *SWEEP,
        f"runtime.cache_dir={root / 'cache'}",
        f"hydra.sweep.dir={sweep}",
        "hydra.launcher.partition=low",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=1",
        "hydra.launcher.timeout_min=30",
    )
    log("submitting: " + " ".join(argv[1:]))
    out = open(root / "prune-run.log", "w")  # noqa: SIM115 - closed below
    ref_out = open(root / "reference.log", "w")  # noqa: SIM115 - closed below
    ref = None
    sub = subprocess.Popen(
        argv, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        end = time.monotonic() + timeout
        run = None
        while sub.poll() is None and time.monotonic() < end:
            run = in_level_1(sweep)
            if run:
                break
            time.sleep(0.05)
        if run is None:
            raise Failed(f"no run reached level 1 (prune-run exited {sub.poll()})")
        cpus = str(os.cpu_count() or 1)
        high = cluster.run(
            "sbatch", "--parsable", "-p", "high", "-c", cpus, "-o", str(root / "high-%j.out"),
            "--wrap", "sleep 1",
        ).strip()  # fmt: skip
        log(f"{run.name} is in level 1: job {high} for all {cpus} CPUs submitted to `high`")
        # the reference, meanwhile: the same sweep without SLURM (Hydra's basic launcher)
        ref = subprocess.Popen(
            prune_run_argv(
                *SWEEP, f"runtime.cache_dir={root / 'ref-cache'}", f"hydra.sweep.dir={root / 'ref'}"
            ),
            cwd=root,
            env=env,
            stdout=ref_out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        while (sub.poll() is None or ref.poll() is None) and time.monotonic() < end:
            time.sleep(0.5)
        if sub.poll() is None or ref.poll() is None:
            raise Failed(f"the sweeps did not end within {timeout:.0f} s")
    finally:
        for p in (sub, ref):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(30)
        out.close()
        ref_out.close()
    if ref.returncode:
        raise Failed(f"the reference sweep failed:\n{(root / 'reference.log').read_text()}")
    text = (root / "prune-run.log").read_text()
    if sub.returncode:
        raise Failed(f"prune-run -m launcher=slurm_cpu exited {sub.returncode}:\n{text}")
    log(f"the sweep and the reference done in {time.monotonic() - t0:.0f} s")

    # SLURM's side: the array jobs, the preempted ones requeued
    jobs = {j["JobId"]: j for j in cluster.jobs()}
    array = [j for j in jobs.values() if j.get("Partition") == "low"]
    if len(array) != 2 or any(j["JobState"] != "COMPLETED" for j in array):
        raise Failed(
            f"2 completed array jobs expected: {[(j['JobId'], j['JobState']) for j in array]}"
        )
    requeued = [j for j in array if int(j.get("Restarts", 0)) > 0]
    if not requeued:
        raise Failed("no array job was preempted and requeued")
    log(
        "requeued: "
        + ", ".join(
            f"job {j['ArrayJobId']}_{j['ArrayTaskId']} ({j['Restarts']}x)" for j in requeued
        )
    )
    high_job = jobs.get(high)
    if high_job is None or high_job["JobState"] != "COMPLETED":
        raise Failed(f"the preempting job {high}: {high_job and high_job['JobState']}")

    # the runs' side: resumed from a step, the same results as without SLURM, the report
    logs = "".join(p.read_text() for p in sorted(sweep.glob("*/*/run.log")))
    resumed = [ln for ln in logs.splitlines() if "level_01: resuming at step" in ln]
    if not resumed:
        raise Failed(f"no run logged 'level_01: resuming at step' in its run.log:\n{logs}")
    steps = []
    for line in resumed:
        log("  " + line.split("] ", 2)[-1])
        step, total = line.split("at step ")[1].split()[:3:2]
        steps.append((int(step), int(total) // EPOCHS))
    if all(step % per_epoch == 0 for step, per_epoch in steps):  # chance: 1 in 23 per job
        log("note: stopped at an epoch end by chance, which an epoch-end resume would match too")
    # the path each signal takes: which process requeued the job
    job_logs = "".join(p.read_text() for p in sorted(sweep.glob(".submitit/*/*_log.*")))
    for expected in expected_logs:
        if expected not in job_logs:
            raise Failed(f"the jobs' logs lack {expected!r}:\n{job_logs}")
    refs, runs = runs_of(root / "ref"), runs_of(sweep)
    if sorted(runs) != sorted(refs) or len(runs) != 2:
        raise Failed(f"runs {sorted(runs)} expected {sorted(refs)}")
    for method, run in runs.items():
        compare(refs[method], run)
    log("results identical to the reference (rows, checkpoints, LR logs)")
    if not (sweep / "report.csv").exists():
        raise Failed(f"no report.csv in {sweep}:\n{text}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--install", action="store_true", help="apt-get install slurm-wlm munge")
    ap.add_argument("--grace", type=int, default=0, help="GraceTime of the preempted partition")
    ap.add_argument(
        "--user-signal",
        action="store_true",
        help="SlurmctldParameters=preempt_send_user_signal (with --grace: SIGUSR2 at preemption)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the directory (logs, runs)")
    ap.add_argument("--dir", type=Path, help="work here instead of a new temporary directory")
    ap.add_argument("--timeout", type=float, default=900, help="seconds for each sweep")
    args = ap.parse_args(argv)

    t0 = time.monotonic()
    if args.install:
        try:
            install()
        except (OSError, subprocess.CalledProcessError) as e:
            log(f"SLURM unavailable: apt-get install slurm-wlm munge failed: {e}")
            return 2
        log(f"installed in {time.monotonic() - t0:.0f} s")
    root = args.dir or Path(tempfile.mkdtemp(prefix="prune-slurm-e2e-"))
    root.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(root / "slurm", args.grace, args.user_signal)
    ok = False
    try:
        cluster.start()
        e2e(root, cluster, args.timeout)
        ok = True
    except Unavailable as e:
        log(f"SLURM unavailable: {e}")
        return 2
    except Failed as e:
        log(f"FAILED: {e}")
        return 1
    finally:
        cluster.stop()
        if not ok:
            for f in sorted((root / "slurm" / "log").glob("slurm*.log")):
                log(f"--- last lines of {f}")
                print("\n".join(f.read_text(errors="replace").splitlines()[-15:]))
        if (ok or not cluster.procs) and not args.keep and args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
        else:
            log(f"kept {root}")
    log(f"passed in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
