"""The Optuna study behind a sweep: its RDB storage, worker processes, heartbeats and counting.

A study lives in an RDB storage (SQLite in the user store by default; tune/storage.py), so a killed
sweep resumes where it stopped and several workers share one study. Heartbeats let a dead worker's trial be
failed and queued again (Optuna's RetryHeartbeatStaleTrialCallback); `finished_count` counts a
retried trial once, so `--trials` means finished trials whoever ran them.
"""
import contextlib
import hashlib
import os
import subprocess
import sys
import tempfile
import time
import warnings

import optuna
import sqlalchemy.exc
from filelock import FileLock
from optuna.trial import TrialState

from .. import progress
from . import space as search_space
from .spec import SweepSpec
from .storage import open_storage, sqlite_path

FINISHED = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
optuna.logging.set_verbosity(optuna.logging.WARNING)


def open_study(spec: SweepSpec, study_name: str) -> optuna.Study:
    """Create or join the study. Workers starting together must not both create the schema:
    SQLite creation is serialised by a lock file, other databases retry once."""
    path = sqlite_path(spec.storage)
    lock = FileLock(os.path.join(tempfile.gettempdir(), "pbs-tune-study-" + hashlib.sha256(
        os.path.abspath(path).encode()).hexdigest()[:16] + ".lock"), timeout=300) if path else contextlib.nullcontext()
    for attempt in range(3):
        try:
            with lock:
                return _create_study(spec, study_name)
        except sqlalchemy.exc.IntegrityError:
            if attempt == 2:
                raise
            time.sleep(1.0 + attempt)


def _create_study(spec, study_name):
    # Workers of one study must not replay each other's random start: the seed mixes in the pid.
    sampler = optuna.samplers.TPESampler(seed=(spec.seed * 1_000_003 + os.getpid()) % (2 ** 31),
                                         multivariate=True, n_startup_trials=10)
    study = optuna.create_study(storage=open_storage(spec.storage, spec.heartbeat_s), study_name=study_name,
                                directions=["minimize", "minimize"], sampler=sampler, load_if_exists=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["latency_ms", "rel_l2"])
    attrs = dict(gpu=spec.gpu, seqlen=spec.seqlen, heads=spec.heads, kv_heads=spec.kv_heads, head_dim=spec.head_dim,
                 dtype=spec.dtype, workload="capture" if spec.calib else spec.workload, max_error=spec.max_error,
                 samples=spec.samples)
    for key, value in attrs.items():
        if value is not None:
            study.set_user_attr(key, value)
    return study


def finished_count(study) -> int:
    """Trials that count towards --trials: finished ones, except a killed worker's trial that
    was failed for a stale heartbeat and queued again (its retry counts instead)."""
    trials = study.get_trials(deepcopy=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retried = {optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) for t in trials}
    return sum(1 for t in trials if t.state in FINISHED and t.number not in retried)


def recover_stale_trials(study, grace_s: float) -> None:
    """Trials left RUNNING by workers that died: once their heartbeat is older than the grace
    period they are failed and queued again, so the next worker (or this one) reruns them.

    A worker killed before its trial's first heartbeat was written leaves a trial that Optuna's
    stale check never sees (it looks only at recorded heartbeats): every running trial gets one
    heartbeat here, which a live worker keeps renewing and a dead one's lets go stale."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return
    for t in running:
        study._storage.record_heartbeat(t._trial_id)
    time.sleep(grace_s + study._storage.get_heartbeat_interval())
    optuna.storages.fail_stale_trials(study)


class _StopAtTarget:
    """Stop every worker once the study holds the target number of counted trials."""

    def __init__(self, target):
        self.target = target

    def __call__(self, study, trial):
        if finished_count(study) >= self.target:
            study.stop()


def enqueue_known_configs(study, spec: SweepSpec):
    """Start a new study from the published default (with the untuned op's launch) and two
    neighbours, so the search never reports worse than the reference merely for lack of trials;
    then the default's tiles with every other estimator, at its threshold and a safer one."""
    if study.get_trials(deepcopy=False):
        return
    space = search_space.GPU_SPACE if spec.on_gpu else search_space.CPU_SPACE
    stock = search_space.reference_config(spec.head_dim, spec.target).launch
    bs = search_space.searched_default(spec.target).block_size
    stages = stock.num_stages if stock.num_stages in space["num_stages"] else space["num_stages"][0]
    warps = stock.num_warps if stock.num_warps in space["num_warps"] else max(space["num_warps"])
    launch = dict(m_split=1, n_split=1, num_warps=warps, num_stages=stages, kernel="tma" if stock.tma else "portable",
                  **(dict(programs_per_sm=0) if stock.tma else {}))
    known = [(2, 0.9, "mean"), (4, 0.9, "mean"), (2, 0.85, "mean")]
    if not spec.per_head:  # per-head plans choose the estimator per layer
        known += [(2, thr, e) for e in space["estimator"] if e != "mean" for thr in (0.9, 0.95)]
    # No more than the study will run: an enqueued trial beyond --trials would wait for ever.
    known = [k for k in known if k[0] in space["blocks_per_segment"]][:spec.trials]
    for per_seg, thr, estimator in known:
        chosen = {} if spec.per_head else dict(estimator=estimator)
        study.enqueue_trial(dict(block_size=bs, blocks_per_segment=per_seg, threshold=thr, **chosen, **launch,
                                 **search_space.default_knobs(space)))


def run_trials(study, objective, spec: SweepSpec, callbacks=()):
    """Run until the study holds spec.trials finished trials (across all workers)."""
    remaining = spec.trials - finished_count(study)
    if remaining <= 0:
        return
    enqueue_known_configs(study, spec)
    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    study.optimize(objective, n_trials=max(remaining, waiting), timeout=spec.timeout, catch=(Exception,),
                   callbacks=[_StopAtTarget(spec.trials), *callbacks])


def pareto_front(study):
    """Completed trials not dominated in (latency, error), fastest first."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    front = [t for t in done if not any(
        o.values[0] <= t.values[0] and o.values[1] <= t.values[1] and o.values != t.values for o in done)]
    return sorted(front, key=lambda t: t.values[0])


def run_workers(spec: SweepSpec, say) -> None:
    """Start spec.workers worker processes on the same studies (each GPU worker sees one GPU),
    hand each the spec, and wait.

    A worker that dies is reported, not fatal: its running trial is failed once its heartbeat
    is stale and run again, by another worker or by this process afterwards."""
    fd, spec_file = tempfile.mkstemp(prefix="pbs-tune-sweep-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        f.write(spec.to_json())
    try:
        procs = []
        for i in range(spec.workers):
            env = dict(os.environ, CUDA_VISIBLE_DEVICES=_visible_device(i)) if spec.on_gpu else None
            procs.append(subprocess.Popen([sys.executable, "-m", "pbs_tune.tune.worker", spec_file], env=env))
        say(f"started {spec.workers} workers: pids {' '.join(str(p.pid) for p in procs)}")
        for i, p in enumerate(procs):
            code = p.wait()
            if code:
                progress.say(f"worker {i} (pid {p.pid}) ended with status {code}; its trials are recovered",
                             always=True)
    finally:
        os.unlink(spec_file)


def _visible_device(i) -> str:
    """The i-th GPU this process may use, as CUDA_VISIBLE_DEVICES names it."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return visible.split(",")[i].strip() if visible else str(i)
