"""The Optuna search behind `pbs-tune sweep`: one study per (GPU, length, shape, workload).

The study lives in an RDB storage (SQLite under cache/ by default), so a killed sweep
resumes where it stopped and several workers can share one study. Trials minimise
(latency, error); trials whose error exceeds the bound are infeasible.
"""
import contextlib
import datetime as _dt
import hashlib
import os
import socket
import tempfile
import time
import warnings
from dataclasses import dataclass, replace

import optuna
import sqlalchemy.exc
import torch
import triton
from filelock import FileLock
from optuna.trial import TrialState

from .. import progress
from ..op.launch_config import LaunchConfig
from ..runtime.profiles import PbsParams, ProfileEntry
from . import space as search_space
from .evaluate import Calibration, layer_plans, measure, measure_layers

FINISHED = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass
class SweepSpec:
    gpu: str
    seqlen: int
    heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    dtype: str = "bfloat16"
    workload: str = "mixed"
    max_error: float | None = 0.10  # None: the published default's error on the calibration data
    trials: int = 40
    timeout: float | None = None
    seed: int = 0
    heartbeat_s: int = 10  # a worker silent for 3x this long is presumed dead
    per_head: bool = False  # per-layer plans (tune/allocate.py) around each trial's global knobs
    margin: float = 0.95
    samples: int = 1  # workload samples calibrated on (a capture brings its own sequences)
    bound_default: bool = False  # max_error was resolved from the default's error (--max-error default)

    def study_name(self, prefix=None):
        base = (f"{self.gpu}-{self.seqlen}-{self.heads}x{self.kv_heads}x{self.head_dim}-{self.dtype}-"
                f"{self.workload}" + (f"-x{self.samples}" if self.samples > 1 else "")
                + ("-per-head" if self.per_head else ""))
        return f"{prefix}-{base}" if prefix else base


def sqlite_path(url: str):
    """The database file of a sqlite:/// URL, else None."""
    return url.split("///", 1)[-1] if url.startswith("sqlite") else None


def check_storage(url: str, create_folder: bool = False) -> None:
    """Fail in one line, before any GPU work, for a storage URL that cannot work."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise ValueError(f"--storage {url!r} is not a database URL; use sqlite:///path/studies.db or "
                         f"postgresql+psycopg://user:password@host/database") from None
    try:
        parsed.get_dialect()
    except sqlalchemy.exc.NoSuchModuleError:
        raise ValueError(f"--storage: unknown database kind {parsed.drivername!r}; use sqlite:///... or "
                         f"postgresql+psycopg://...") from None
    except ImportError as exc:
        raise ValueError(f"--storage {parsed.drivername}: its driver is not installed ({exc.name}); "
                         f"for PostgreSQL: pip install 'psycopg[binary]'") from None
    path = sqlite_path(url)
    if path is not None:
        folder = os.path.dirname(os.path.abspath(path)) if path else ""
        if folder and not os.path.isdir(folder):
            if not create_folder:
                raise ValueError(f"--storage: folder {folder} does not exist; create it or choose another path")
            os.makedirs(folder, exist_ok=True)
        return
    try:
        engine = create_engine(url, connect_args={"connect_timeout": 10} if parsed.get_backend_name() == "postgresql"
                               else {})
        with engine.connect() as con:
            con.execute(text("select 1"))
    except ImportError as exc:
        raise ValueError(f"--storage {parsed.drivername}: its driver is not installed ({exc.name}); "
                         f"for PostgreSQL: pip install 'psycopg[binary]'") from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        first = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        raise ValueError(f"--storage: cannot reach {parsed.render_as_string(hide_password=True)} ({first})") from None


def open_storage(url: str, heartbeat_s: int = 10):
    """RDB storage with heartbeats: a killed worker's running trial is marked failed after the
    grace period and enqueued again (Optuna's RetryHeartbeatStaleTrialCallback), so no trial is lost."""
    kwargs = {}
    if sqlite_path(url) is not None:
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)
        return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_s, grace_period=3 * heartbeat_s,
                                          heartbeat_stale_trial_callback=retry, **kwargs)


def open_study(spec: SweepSpec, storage_url: str, study_name: str) -> optuna.Study:
    """Create or join the study. Workers starting together must not both create the schema:
    SQLite creation is serialised by a lock file, other databases retry once."""
    path = sqlite_path(storage_url)
    lock = FileLock(os.path.join(tempfile.gettempdir(), "pbs-tune-study-" + hashlib.sha256(
        os.path.abspath(path).encode()).hexdigest()[:16] + ".lock"), timeout=300) if path else contextlib.nullcontext()
    for attempt in range(3):
        try:
            with lock:
                return _create_study(spec, storage_url, study_name)
        except sqlalchemy.exc.IntegrityError:
            if attempt == 2:
                raise
            time.sleep(1.0 + attempt)


def _create_study(spec, storage_url, study_name):
    # Workers of one study must not replay each other's random start: the seed mixes in the pid.
    sampler = optuna.samplers.TPESampler(seed=(spec.seed * 1_000_003 + os.getpid()) % (2 ** 31),
                                         multivariate=True, n_startup_trials=10)
    study = optuna.create_study(storage=open_storage(storage_url, spec.heartbeat_s), study_name=study_name,
                                directions=["minimize", "minimize"], sampler=sampler, load_if_exists=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["latency_ms", "rel_l2"])
    for key in ("gpu", "seqlen", "heads", "kv_heads", "head_dim", "dtype", "workload", "max_error", "samples"):
        if getattr(spec, key) is not None:
            study.set_user_attr(key, getattr(spec, key))
    return study


def objective_for(cal: Calibration, spec: SweepSpec, on_gpu: bool):
    space, arch, smem = search_space.CPU_SPACE, None, None
    if on_gpu:
        props = torch.cuda.get_device_properties(0)
        arch, smem = props.major * 10 + props.minor, props.shared_memory_per_block_optin
        space = search_space.gpu_space(arch)
    curves = {}  # per-head curves by (block, segment), shared by the trials of this process

    def objective(trial):
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}:gpu={_visible_gpus()}")
        cfg = search_space.suggest(trial, space, per_head=spec.per_head)
        progress.say(f"trial {trial.number}: block {cfg.block_size}, segment {cfg.segment_size}, threshold "
                     f"{cfg.threshold:.3g}, launch {cfg.launch.label()}")
        problem = search_space.launch_problem(cfg, head_dim=spec.head_dim, dtype=spec.dtype, arch=arch,
                                              smem_limit=smem) if on_gpu else None
        if problem:
            trial.set_user_attr("fail_reason", problem)
            raise optuna.TrialPruned(problem)
        try:
            if spec.per_head:
                plans = layer_plans(cal, cfg, spec.margin, curves)
                trial.set_user_attr("plans", [dict(permute=p.permute, thresholds=list(p.thresholds),
                                                   kept_ratio=round(p.kept_ratio, 4), margin=round(p.margin, 4))
                                              for p in plans])
                m = measure_layers(cal, cfg, plans, on_gpu=on_gpu)
            else:
                m = measure(cal, cfg, on_gpu=on_gpu)
        except Exception as exc:
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
            if on_gpu:
                torch.cuda.empty_cache()
            # Optuna records a NaN result as a failed trial with one log line (an exception would
            # print its traceback); the reason is on the trial.
            return float("nan"), float("nan")
        for key, val in m.items():
            trial.set_user_attr(key, val)
        trial.set_constraint("error_over_bound", m["rel_l2"] - spec.max_error)  # feasible when <= 0
        return m["latency_ms"], m["rel_l2"]
    return objective


def _visible_gpus() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "all") if torch.cuda.is_available() else "none"


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
    period they are failed and queued again, so the next worker (or this one) reruns them."""
    if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        return
    time.sleep(grace_s)
    optuna.storages.fail_stale_trials(study)


class _StopAtTarget:
    """Stop every worker once the study holds the target number of counted trials."""

    def __init__(self, target):
        self.target = target

    def __call__(self, study, trial):
        if finished_count(study) >= self.target:
            study.stop()


def enqueue_known_configs(study, on_gpu: bool):
    """Start a new study from the published default and two neighbours, so the search
    never reports worse than the reference merely for lack of trials."""
    if study.get_trials(deepcopy=False):
        return
    space = search_space.GPU_SPACE if on_gpu else search_space.CPU_SPACE
    bs = space["block_size"][-1]
    stages = 3 if 3 in space["num_stages"] else space["num_stages"][0]
    launch = dict(m_split=1, n_split=1, num_warps=max(space["num_warps"]), num_stages=stages, kernel="portable")
    for per_seg, thr in ((2, 0.9), (4, 0.9), (2, 0.85)):
        if per_seg in space["blocks_per_segment"]:
            study.enqueue_trial(dict(block_size=bs, blocks_per_segment=per_seg, threshold=thr, **launch))


def run_trials(study, objective, spec: SweepSpec, callbacks=(), on_gpu=True):
    """Run until the study holds spec.trials finished trials (across all workers)."""
    remaining = spec.trials - finished_count(study)
    if remaining <= 0:
        return
    enqueue_known_configs(study, on_gpu)
    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    study.optimize(objective, n_trials=max(remaining, waiting), timeout=spec.timeout, catch=(Exception,),
                   callbacks=[_StopAtTarget(spec.trials), *callbacks])


def feasible_trials(study, max_error):
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get("rel_l2", float("inf")) <= max_error]


def pareto_front(study):
    """Completed trials not dominated in (latency, error), fastest first."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    front = [t for t in done if not any(
        o.values[0] <= t.values[0] and o.values[1] <= t.values[1] and o.values != t.values for o in done)]
    return sorted(front, key=lambda t: t.values[0])


def choose(study, max_error):
    """Fastest feasible trial, or None."""
    ok = feasible_trials(study, max_error)
    return min(ok, key=lambda t: t.values[0]) if ok else None


def profile_entry(spec: SweepSpec, trial, baselines: dict, reference: dict, study_name: str,
                  source: str, layer_ids=None, held_out=None) -> ProfileEntry:
    """The chosen trial as a profile entry. A per-head trial on captured layers gives each
    layer its plan (`layers:`); on a synthetic workload (one 'layer') the plan is the entry's."""
    cfg = trial.user_attrs["config"]
    params = PbsParams(cfg["block_size"], cfg["segment_size"], cfg["threshold"])
    launch = LaunchConfig(**cfg["launch"])
    layers = {}
    for i, p in enumerate(trial.user_attrs.get("plans", [])):
        planned = PbsParams(cfg["block_size"], cfg["segment_size"], tuple(p["thresholds"]), p["permute"])
        if layer_ids is None:
            params = planned
        else:
            layers[layer_ids[i]] = (planned, launch)
    lat = trial.values[0]
    speedup = {}
    for name, base in (("vs_cudnn", baselines.get("cudnn_ms")), ("vs_flash", baselines.get("flash_ms")),
                       ("vs_reference", reference.get("latency_ms"))):
        if base:
            speedup[name] = round(base / lat, 3)
    dense = [v for k, v in baselines.items() if k.endswith("_ms")]
    return ProfileEntry(
        gpu=spec.gpu, seqlen=spec.seqlen, heads=spec.heads, kv_heads=spec.kv_heads, head_dim=spec.head_dim,
        dtype=spec.dtype,
        params=params, launch=launch, layers=layers,
        # The loader runs dense SDPA where it beats the best sparse config at this length.
        dense_faster=bool(dense) and min(dense) < lat,
        measured=dict(latency_ms=round(lat, 4), rel_l2=round(trial.user_attrs["rel_l2"], 5),
                      recall=round(trial.user_attrs["recall"], 5), density=round(trial.user_attrs["density"], 4)),
        info=dict(
            baselines={k: (round(v, 4) if isinstance(v, float) else v) for k, v in baselines.items()},
            reference={k: (round(v, 5) if isinstance(v, float) else v) for k, v in reference.items()},
            speedup=speedup, max_error=spec.max_error, calibration=source, study=study_name, trial=trial.number,
            **(dict(max_error_is_default=True) if spec.bound_default else {}),
            **(dict(samples=spec.samples) if spec.samples > 1 else {}),
            **(dict(held_out=held_out) if held_out else {}),
            **(dict(per_head=dict(margin=spec.margin, reference_threshold=cfg["threshold"],
                                  margins_used=[p.get("margin") for p in trial.user_attrs.get("plans", [])],
                                  bound="per layer: output rel-L2 <= margin x the reference threshold's (with "
                                        "several captured sequences also on each one left out of the fit), and per "
                                        "head no fewer sampled queries' heaviest keys kept"))
               if spec.per_head else {}),
            versions=dict(torch=str(torch.__version__), triton=str(triton.__version__),
                          optuna=str(optuna.__version__)),
            date=_dt.date.today().isoformat()),
    )


def held_out_check(hold: Calibration, spec: SweepSpec, trial, study, on_gpu: bool) -> dict:
    """The chosen trial and the published default on a sample the search never saw (another
    seed of the workload, or a capture of other text): a calibration error that does not carry
    over is the tuner fitting its own sample. Kept on the study and in the entry's info. Timed
    on a GPU only: interpreter times order trials, they mean nothing beside a profile."""
    from types import SimpleNamespace
    cfg = trial.user_attrs["config"]
    config = search_space.TrialConfig(cfg["block_size"], cfg["segment_size"], cfg["threshold"],
                                      LaunchConfig(**cfg["launch"]))
    plans = [SimpleNamespace(thresholds=tuple(p["thresholds"]), permute=p["permute"])
             for p in trial.user_attrs.get("plans", [])]
    if plans and len(plans) != hold.layers:
        raise ValueError(f"held-out data {hold.source} has {hold.layers} layers; the calibration had {len(plans)}")
    with torch.no_grad():
        mine = (measure_layers(hold, config, plans, on_gpu=on_gpu, timed=on_gpu) if plans
                else measure(hold, config, on_gpu=on_gpu, timed=on_gpu))
    default = search_space.reference_config(spec.head_dim, cpu=not on_gpu).as_dict()
    ref = (dict(config=default, **mine) if not plans and cfg == default  # the default was chosen: measured above
           else reference_measurement(hold, spec, on_gpu, timed=on_gpu))
    out = dict(source=hold.source, trial=trial.number, calibration_rel_l2=round(trial.user_attrs["rel_l2"], 5),
               rel_l2=round(mine["rel_l2"], 5), latency_ms=_rounded(mine.get("latency_ms"), 4),
               reference_rel_l2=_rounded(ref.get("rel_l2"), 5),
               reference_latency_ms=_rounded(ref.get("latency_ms"), 4),
               speedup_vs_reference=_rounded(ref["latency_ms"] / mine["latency_ms"], 3)
               if ref.get("latency_ms") and mine.get("latency_ms") else None,
               # With --max-error default the bound is the default's error, on this sample too.
               within_bound=mine["rel_l2"] <= (ref.get("rel_l2", 0.0) if spec.bound_default else spec.max_error))
    study.set_user_attr(f"held_out:{trial.number}", out)
    return out


def bound_by_default(spec: SweepSpec, reference: dict) -> SweepSpec:
    """`spec` with its error bound set to the published default's error on the calibration data."""
    if "rel_l2" not in reference:
        raise RuntimeError(f"--max-error default: the default config did not run here ({reference.get('error')})")
    return replace(spec, max_error=reference["rel_l2"], bound_default=True)


def _rounded(x, digits):
    return None if x is None else round(x, digits)


def reference_measurement(cal: Calibration, spec: SweepSpec, on_gpu: bool, timed: bool = True) -> dict:
    """The published default config on the same data, for every profile entry."""
    cfg = search_space.reference_config(spec.head_dim, cpu=not on_gpu)
    try:
        if spec.per_head:  # timed layer by layer, as the per-head trials are
            from .allocate import LayerPlan
            heads = cal.q.shape[1]
            plans = [LayerPlan(True, (cfg.threshold,) * heads, 1.0, 0.0, 0.0)] * cal.layers
            return dict(config=cfg.as_dict(), **measure_layers(cal, cfg, plans, on_gpu=on_gpu, timed=timed))
        return dict(config=cfg.as_dict(), **measure(cal, cfg, on_gpu=on_gpu, timed=timed))
    except Exception as exc:
        return dict(config=cfg.as_dict(), error=f"{type(exc).__name__}: {exc}"[:300])
