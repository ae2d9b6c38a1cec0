"""The Optuna search behind `pbs-tune sweep`: one study per (GPU, length, shape, workload).

`run_sweep(spec)` is the whole sweep: per length it calibrates, runs the trials (with worker
processes that are handed the same spec), checks the chosen trial on held-out data, writes the
profile entries and builds their kernel library. The study lives in an RDB storage (SQLite in
the user store by default), so a killed sweep resumes where it stopped and several workers can
share one study. Trials minimise (latency, error); trials whose error exceeds the bound are
infeasible.
"""
import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import os
import socket
import subprocess
import sys
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
from ..runtime import kernel_library, profile_store, profiles
from ..runtime.gpu import CPU, device_for, interpreter_size_error
from ..op.estimators import ESTIMATORS
from ..runtime.profiles import ProfileEntry
from ..seqlen import format_length
from ..dtypes import torch_dtype
from . import launch_choice
from . import space as search_space
from .evaluate import Calibration, compared, dense_baselines, layer_plans, load_calibration, measure, measure_layers
from .space import TrialConfig
from .workloads import CALIBRATION_SETS

FINISHED = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
# The held-out family of each calibration workload: one the sweep did not calibrate on.
OTHER_FAMILY = dict(mixed="retrieval", retrieval="stripes", stripes="sink_local", sink_local="diffuse",
                    diffuse="mixed")
optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass(frozen=True)
class SweepSpec:
    """One sweep, whole: what to tune, on which data, and where the study, profile and library
    go. Worker processes are handed it as JSON (`to_json`/`from_json`), not as flags."""

    gpu: str
    seqlens: tuple
    storage: str
    profile: str
    heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    dtype: str = "bfloat16"
    workload: str = "mixed"
    calib: str | None = None          # captured Q/K/V to tune on instead of the workload
    holdout_calib: str | None = None  # with calib: a capture of other text for the held-out check
    max_error: float | None = 0.10  # None: the published default's error on the calibration data
    trials: int = 40
    timeout: float | None = None
    seed: int = 0
    heartbeat_s: int = 10  # a worker silent for 3x this long is presumed dead
    per_head: bool = False  # per-layer plans (tune/allocate.py) around each trial's global knobs
    margin: float = 0.95
    estimators: tuple = ESTIMATORS  # per_head: the block estimators a layer's plan may use
    samples: int = 1  # workload samples calibrated on (a capture brings its own sequences)
    study: str | None = None  # the study's name (one length) or names' prefix
    library: str | None = None  # kernel library folder (default: the profile's)
    workers: int = 1
    compile: bool = True
    quiet: bool = False  # no progress on stderr, in this process and the workers
    # Sources the chosen config's launch is judged on (tune/launch_choice.py); None: every
    # workload family and the next seed (or the capture) on a GPU, none in the interpreter.
    launch_sources: tuple | None = None
    rewrite: bool = False  # a length whose study is finished and entry written is measured and written again
    bound_default: bool = False  # max_error was resolved from the default's error (--max-error default)
    # With bound_default on a calibration set: the default's error on each of its workloads, each a bound.
    source_bounds: dict | None = None

    @property
    def on_gpu(self) -> bool:
        return self.gpu != CPU

    @property
    def seqlen(self) -> int:
        """The length of a one-length spec (`at`)."""
        (n,) = self.seqlens
        return n

    def at(self, seqlen: int) -> "SweepSpec":
        return replace(self, seqlens=(seqlen,))

    def study_names(self) -> dict:
        """{length: study name}: `study` itself for one length, else its prefix."""
        if self.study and len(self.seqlens) == 1:
            return {self.seqlens[0]: self.study}
        return {n: self.at(n).study_name(self.study) for n in self.seqlens}

    def study_name(self, prefix=None):
        source = "capture" if self.calib else self.workload
        base = (f"{self.gpu}-{self.seqlen}-{self.heads}x{self.kv_heads}x{self.head_dim}-{self.dtype}-"
                f"{source}" + (f"-x{self.samples}" if self.samples > 1 else "")
                + (self._per_head_suffix() if self.per_head else ""))
        return f"{prefix}-{base}" if prefix else base

    def _per_head_suffix(self) -> str:
        """Studies of plans over other estimators are other studies (mean alone: the earlier name)."""
        return "-per-head" + ("" if self.estimators == ("mean",) else "-" + "-".join(self.estimators))

    def calibration(self, held_out: bool = False, workload: str | None = None) -> Calibration:
        """This length's calibration data, or the held-out data: the workload's next seed, or
        the capture of other text; with `workload`, that workload family's next seed."""
        return load_calibration(seqlen=self.seqlen, heads=self.heads, kv_heads=self.kv_heads,
                                head_dim=self.head_dim, dtype=torch_dtype(self.dtype), device=device_for(self.gpu),
                                workload=workload or self.workload,
                                calib_file=None if workload else self.holdout_calib if held_out else self.calib,
                                seed=self.seed + (1 if held_out else 0), samples=self.samples)

    def held_out_data(self) -> list:
        """What the chosen config is checked on afterwards: the workload's next seed and the next
        seed of another workload family (never calibrated on), or the capture of other text. A
        calibration set (every family) is checked on its next seed."""
        if self.calib:
            return [lambda: self.calibration(held_out=True)] if self.holdout_calib else []
        if self.workload in CALIBRATION_SETS:
            return [lambda: self.calibration(held_out=True)]
        return [lambda: self.calibration(held_out=True),
                lambda: self.calibration(held_out=True, workload=OTHER_FAMILY[self.workload])]

    def launch_source_names(self) -> tuple:
        if self.launch_sources is not None:
            return tuple(self.launch_sources)
        return tuple(launch_choice.source_names(self.workload, self.seed, self.calib)) if self.on_gpu else ()

    def shape(self) -> dict:
        return dict(seqlen=self.seqlen, heads=self.heads, kv_heads=self.kv_heads, head_dim=self.head_dim,
                    dtype=torch_dtype(self.dtype), device=device_for(self.gpu))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "SweepSpec":
        d = json.loads(text)
        return cls(**dict(d, seqlens=tuple(d["seqlens"]), estimators=tuple(d["estimators"])))


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


def objective_for(cal: Calibration, spec: SweepSpec):
    space, arch, smem = search_space.CPU_SPACE, None, None
    if spec.on_gpu:
        props = torch.cuda.get_device_properties(0)
        arch, smem = props.major * 10 + props.minor, props.shared_memory_per_block_optin
        space = search_space.gpu_space(arch)
    curves = {}  # per-head curves by (block, segment), shared by the trials of this process

    def objective(trial):
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}:gpu={_visible_gpus()}")
        cfg = search_space.suggest(trial, space, per_head=spec.per_head)
        p = cfg.params
        progress.say(f"trial {trial.number}: block {p.block_size}, segment {p.segment_size}, threshold "
                     f"{p.threshold:.3g}, estimator {p.estimator}, launch {cfg.launch.label()}")
        problem = search_space.launch_problem(cfg, head_dim=spec.head_dim, dtype=spec.dtype, arch=arch,
                                              smem_limit=smem) if spec.on_gpu else None
        if problem:
            trial.set_user_attr("fail_reason", problem)
            raise optuna.TrialPruned(problem)
        try:
            if spec.per_head:
                plans = layer_plans(cal, cfg, spec.margin, curves, spec.estimators)
                trial.set_user_attr("plans", [plan.as_dict() for plan in plans])
                m = measure_layers(cal, cfg, plans, on_gpu=spec.on_gpu)
            else:
                m = measure(cal, cfg, on_gpu=spec.on_gpu)
        except Exception as exc:
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
            if spec.on_gpu:
                torch.cuda.empty_cache()
            # Optuna records a NaN result as a failed trial with one log line (an exception would
            # print its traceback); the reason is on the trial.
            return float("nan"), float("nan")
        for key, val in m.items():
            trial.set_user_attr(key, val)
        trial.set_constraint("error_over_bound", bound_excess(m, spec))  # feasible when <= 0
        return m["latency_ms"], m["rel_l2"]
    return objective


def trial_plans(trial) -> list:
    """The per-layer plans a per-head trial stored (LayerPlan), in calibration-layer order."""
    from .allocate import LayerPlan
    return [LayerPlan.from_dict(d) for d in trial.user_attrs.get("plans", [])]


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


class _Progress:
    """One line per finished trial: trials done and the best feasible latency so far."""

    def __init__(self, spec):
        self.spec = spec
        self.best = None

    def __call__(self, study, trial):
        rel = trial.user_attrs.get("rel_l2")
        if trial.values and rel is not None and within_bound(trial.user_attrs, self.spec):
            if self.best is None or trial.values[0] < self.best[0]:
                self.best = (trial.values[0], rel)
        done = finished_count(study)
        best = f"{self.best[0]:.3f} ms (err {self.best[1]:.4f})" if self.best else "none yet"
        bar = "#" * int(20 * min(done, self.spec.trials) / self.spec.trials)
        progress.say(f"[{bar:<20}] {done}/{self.spec.trials} trials, best feasible: {best}")


def enqueue_known_configs(study, spec: SweepSpec):
    """Start a new study from the published default (with the untuned op's launch) and two
    neighbours, so the search never reports worse than the reference merely for lack of trials;
    then the default's tiles with every other estimator, at its threshold and a safer one."""
    if study.get_trials(deepcopy=False):
        return
    space = search_space.GPU_SPACE if spec.on_gpu else search_space.CPU_SPACE
    stock = search_space.reference_config(spec.head_dim, cpu=not spec.on_gpu).launch
    bs = space["block_size"][-1]
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
        study.enqueue_trial(dict(block_size=bs, blocks_per_segment=per_seg, threshold=thr,
                                 **({} if spec.per_head else dict(estimator=estimator)), **launch))


def run_trials(study, objective, spec: SweepSpec, callbacks=()):
    """Run until the study holds spec.trials finished trials (across all workers)."""
    remaining = spec.trials - finished_count(study)
    if remaining <= 0:
        return
    enqueue_known_configs(study, spec)
    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    study.optimize(objective, n_trials=max(remaining, waiting), timeout=spec.timeout, catch=(Exception,),
                   callbacks=[_StopAtTarget(spec.trials), *callbacks])


def bound_excess(m: dict, spec: SweepSpec) -> float:
    """How far a measurement is over the error bound (<= 0: within it). With a bound per workload
    of a calibration set, the worst relative excess over them; else the excess of its error."""
    if spec.source_bounds and "rel_l2_by_source" in m:
        return max((m["rel_l2_by_source"][name] - bound) / max(bound, 1e-12)
                   for name, bound in spec.source_bounds.items())
    return m.get("rel_l2", float("inf")) - spec.max_error


def within_bound(m: dict, spec: SweepSpec) -> bool:
    return bound_excess(m, spec) <= 0


def feasible_trials(study, spec: SweepSpec):
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if within_bound(t.user_attrs, spec)]


def pareto_front(study):
    """Completed trials not dominated in (latency, error), fastest first."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    front = [t for t in done if not any(
        o.values[0] <= t.values[0] and o.values[1] <= t.values[1] and o.values != t.values for o in done)]
    return sorted(front, key=lambda t: t.values[0])


def choose(study, spec: SweepSpec):
    """Fastest feasible trial, or None."""
    ok = feasible_trials(study, spec)
    return min(ok, key=lambda t: t.values[0]) if ok else None


def profile_entry(spec: SweepSpec, trial, baselines: dict, reference: dict, study_name: str,
                  source: str, layer_ids=None, held_out=None, chosen: dict | None = None) -> ProfileEntry:
    """The chosen trial as a profile entry. A per-head trial on captured layers gives each
    layer its plan (`layers:`); on a synthetic workload (one 'layer') the plan is the entry's.
    `chosen`: the launch chosen over several sources (`choose_entry_launch`), re-measured."""
    cfg = TrialConfig.of_trial(trial)
    m = dict(trial.user_attrs, latency_ms=trial.values[0])
    if chosen:
        cfg = replace(cfg, launch=chosen["launch"])
        m.update(chosen["measured"])
    params, layers = cfg.params, {}
    for i, plan in enumerate(trial_plans(trial)):
        if layer_ids is None:
            params = cfg.planned(plan)
        else:
            layers[layer_ids[i]] = (cfg.planned(plan), cfg.launch)
    lat = m["latency_ms"]
    figures = compared(lat, baselines, reference, on_gpu=spec.on_gpu)
    return ProfileEntry(
        gpu=spec.gpu, seqlen=spec.seqlen, heads=spec.heads, kv_heads=spec.kv_heads, head_dim=spec.head_dim,
        dtype=spec.dtype, params=params, launch=cfg.launch, layers=layers, dense_faster=figures.pop("dense_faster"),
        measured=dict(latency_ms=round(lat, 4), rel_l2=round(m["rel_l2"], 5), recall=round(m["recall"], 5),
                      density=round(m["density"], 4)),
        info=dict(
            **figures, max_error=spec.max_error, calibration=source, study=study_name, trial=trial.number,
            **(dict(max_error_is_default=True) if spec.bound_default else {}),
            **(dict(max_error_by_source={k: round(v, 5) for k, v in spec.source_bounds.items()},
                    rel_l2_by_source={k: round(v, 5) for k, v in m["rel_l2_by_source"].items()})
               if spec.source_bounds else {}),
            **(dict(samples=spec.samples) if spec.samples > 1 else {}),
            **(dict(held_out=held_out) if held_out else {}),
            **(dict(launch_choice=chosen["record"]) if chosen else {}),
            **(dict(per_head=dict(margin=spec.margin, reference_threshold=cfg.params.threshold,
                                  margins_used=[p.margin for p in trial_plans(trial)],
                                  bound="per layer: output rel-L2 <= margin x the reference threshold's (with "
                                        "several captured sequences also on each one left out of the fit), and per "
                                        "head no fewer sampled queries' heaviest keys kept"))
               if spec.per_head else {}),
            versions=dict(torch=str(torch.__version__), triton=str(triton.__version__),
                          optuna=str(optuna.__version__)),
            date=_dt.date.today().isoformat()),
    )


def held_out_check(hold: Calibration, spec: SweepSpec, trial, study, launch=None) -> dict:
    """The chosen trial and the published default on a sample the search never saw (another
    seed of the workload, or a capture of other text): a calibration error that does not carry
    over is the tuner fitting its own sample. Kept on the study and in the entry's info. Timed
    on a GPU only: interpreter times order trials, they mean nothing beside a profile."""
    on_gpu = spec.on_gpu
    cfg = TrialConfig.of_trial(trial)
    cfg = replace(cfg, launch=launch) if launch else cfg
    plans = trial_plans(trial)
    if plans and len(plans) != hold.layers:
        raise ValueError(f"held-out data {hold.source} has {hold.layers} layers; the calibration had {len(plans)}")
    with torch.no_grad():
        mine = (measure_layers(hold, cfg, plans, on_gpu=on_gpu, timed=on_gpu) if plans
                else measure(hold, cfg, on_gpu=on_gpu, timed=on_gpu))
    default = search_space.reference_config(spec.head_dim, cpu=not on_gpu)
    ref = (dict(config=default.as_dict(), **mine) if not plans and cfg == default  # the default was chosen: measured above
           else reference_measurement(hold, spec, timed=on_gpu))
    out = dict(source=hold.source, trial=trial.number, calibration_rel_l2=round(trial.user_attrs["rel_l2"], 5),
               rel_l2=round(mine["rel_l2"], 5), latency_ms=_rounded(mine.get("latency_ms"), 4),
               reference_rel_l2=_rounded(ref.get("rel_l2"), 5),
               reference_latency_ms=_rounded(ref.get("latency_ms"), 4),
               speedup_vs_reference=_rounded(ref["latency_ms"] / mine["latency_ms"], 3)
               if ref.get("latency_ms") and mine.get("latency_ms") else None,
               # With --max-error default the bound is the default's error, on this sample too
               # (on each workload of a calibration set).
               within_bound=within_bound(mine, replace(spec, max_error=ref.get("rel_l2", 0.0),
                                                       source_bounds=ref.get("rel_l2_by_source"))
                                         if spec.bound_default else spec))
    if "rel_l2_by_source" in mine:
        out.update(rel_l2_by_source={k: round(v, 5) for k, v in mine["rel_l2_by_source"].items()},
                   reference_rel_l2_by_source={k: round(v, 5) for k, v in ref.get("rel_l2_by_source", {}).items()})
    study.set_user_attr(f"held_out:{trial.number}:{hold.source}", out)
    return out


def bound_by_default(spec: SweepSpec, reference: dict) -> SweepSpec:
    """`spec` with its error bound set to the published default's error on the calibration data."""
    if "rel_l2" not in reference:
        raise RuntimeError(f"--max-error default: the default config did not run here ({reference.get('error')})")
    return replace(spec, max_error=reference["rel_l2"], bound_default=True,
                   source_bounds=reference.get("rel_l2_by_source"))


def _rounded(x, digits):
    return None if x is None else round(x, digits)


def reference_measurement(cal: Calibration, spec: SweepSpec, timed: bool = True) -> dict:
    """The published default config on the same data, for every profile entry."""
    cfg = search_space.reference_config(spec.head_dim, cpu=not spec.on_gpu)
    try:
        if spec.per_head:  # timed layer by layer, as the per-head trials are
            from .allocate import LayerPlan
            heads = cal.q.shape[1]
            plans = [LayerPlan(True, (cfg.params.threshold,) * heads, 1.0, 0.0, 0.0)] * cal.layers
            return dict(config=cfg.as_dict(), **measure_layers(cal, cfg, plans, on_gpu=spec.on_gpu, timed=timed))
        return dict(config=cfg.as_dict(), **measure(cal, cfg, on_gpu=spec.on_gpu, timed=timed))
    except Exception as exc:
        return dict(config=cfg.as_dict(), error=f"{type(exc).__name__}: {exc}"[:300])


# ---- the sweep ----

def check_spec(spec: SweepSpec) -> None:
    """Everything that can be wrong with a sweep, said in one line before any GPU work."""
    if spec.heads % spec.kv_heads:
        raise ValueError(f"--heads {spec.heads} must be a multiple of --kv-heads {spec.kv_heads}")
    if spec.holdout_calib and not spec.calib:
        raise ValueError("--holdout-calib checks a --calib sweep; a workload is checked on its next seed")
    if spec.holdout_calib:
        from .evaluate import captured_layers
        (_, held_ids), (_, calib_ids) = captured_layers(spec.holdout_calib), captured_layers(spec.calib)
        if held_ids != calib_ids:
            raise ValueError(f"--holdout-calib {spec.holdout_calib} holds layers {held_ids}; --calib holds "
                             f"{calib_ids}: capture the same --layers")
    # The user store's folder is made on first use; a folder the user named must exist.
    check_storage(spec.storage, create_folder=spec.storage == profile_store.default_storage_url())
    if spec.on_gpu and spec.dtype == "float32":
        raise ValueError("--dtype float32 is only for the CPU interpreter; use bfloat16 or float16")
    if not spec.on_gpu:
        too_big = next(filter(None, (interpreter_size_error(n, spec.heads) for n in spec.seqlens)), None)
        if too_big or spec.dtype == "bfloat16":
            why = too_big or "the CPU interpreter cannot run bfloat16"
            raise ValueError(f"{why}; on this CPU try: {profile_store.sweep_hint(CPU)}")
    if os.path.exists(spec.profile):
        profiles.load(spec.profile)  # fail now, not after an hour of tuning


def run_sweep(spec: SweepSpec, say=progress.say) -> list:
    """Tune every length of `spec` and write the chosen entries to its profile (and their
    kernel library); returns the entries. `say` prints the sweep's results (fronts, choices)."""
    check_spec(spec)
    done = finished_entries(spec)
    names = {n: name for n, name in spec.study_names().items() if n not in done}
    for n, entry in done.items():
        say(f"== {format_length(n)}: study '{entry.info['study']}' already holds its {spec.trials} trials and "
            f"{spec.profile} its entry: nothing measured or written (--rewrite measures and writes it again; "
            f"a larger --trials searches on)")
    if not names:
        return []
    if spec.workers > 1:
        for n, name in names.items():  # the published default goes in once, before the workers start
            enqueue_known_configs(open_study(spec.at(n), name), spec)
        _run_workers(spec, say)
    entries = []
    for n, name in names.items():
        say(f"== {format_length(n)}: study '{name}' in {spec.storage}")
        entry = _sweep_length(spec.at(n), name, say)
        entries.append(entry)
        say("chosen: " + entry_line(entry))
        if entry.failed_check:
            say(f"written but never run by the loader: {entry.failed_check}")
    profiles.merge_entries(spec.profile, entries)
    say(f"wrote {len(entries)} entr{'y' if len(entries) == 1 else 'ies'} to {spec.profile}")
    if spec.on_gpu and spec.compile:
        kernel_library.build_in_fresh_process(spec.profile, spec.library)
    return entries


def finished_entries(spec: SweepSpec) -> dict:
    """{length: entry} of the lengths whose study already holds --trials finished trials and whose
    entry from that study is in the profile: re-running a finished sweep re-measures nothing."""
    if spec.rewrite or not os.path.exists(spec.profile):
        return {}
    written = {e.key(): e for e in profiles.load(spec.profile).entries}
    done = {}
    for n, name in spec.study_names().items():
        entry = written.get((spec.gpu, n, spec.heads, spec.kv_heads, spec.head_dim, spec.dtype))
        if entry is None or entry.info.get("study") != name:
            continue
        try:
            study = optuna.load_study(study_name=name, storage=open_storage(spec.storage, spec.heartbeat_s))
        except KeyError:  # the entry came from a study in another storage
            continue
        if finished_count(study) >= spec.trials:
            done[n] = entry
    return done


def _sweep_length(spec: SweepSpec, name: str, say) -> ProfileEntry:
    cal = spec.calibration()
    reference = reference_measurement(cal, spec)
    if spec.max_error is None:
        spec = bound_by_default(spec, reference)
        say(f"error bound: the default's on this data, rel_l2 {spec.max_error:.5f}")
        if spec.source_bounds:
            say("  and on each workload: " + ", ".join(f"{k} {v:.5f}" for k, v in spec.source_bounds.items()))
    study = open_study(spec, name)
    baselines = dense_baselines(cal, on_gpu=spec.on_gpu)
    recover_stale_trials(study, 3 * spec.heartbeat_s)
    run_trials(study, objective_for(cal, spec), spec, callbacks=[_Progress(spec)])
    print_front(pareto_front(study), spec, say)
    best = choose(study, spec)
    if best is None:
        raise RuntimeError(f"no trial at {format_length(spec.seqlen)} met --max-error {spec.max_error}; "
                           f"raise --trials or --max-error")
    chosen = choose_entry_launch(spec, best, cal, say)
    layer_ids, source = cal.layer_ids, cal.source
    del cal
    held = []
    for load in spec.held_out_data():
        hold = load()
        held.append(held_out_check(hold, spec, best, study, chosen and chosen["launch"]))
        del hold
        say(held_out_line(held[-1], spec))
    entry = profile_entry(spec, best, baselines, reference, name, source, layer_ids, held, chosen)
    return replace(entry, failed_check=failed_check(held, spec))


def failed_check(held: list, spec: SweepSpec) -> str | None:
    """Why an entry must not run: its held-out checks over their bound, with the figures; else None."""
    over = [h for h in held if not h["within_bound"]]
    return "; ".join(
        f"held out ({h['source']}): rel_l2 {h['rel_l2']:.4f} over the bound "
        + (f"{h['reference_rel_l2']:.4f} (the default's there)" if spec.bound_default else f"{spec.max_error:g}")
        + (f", by workload: {profiles.describe_by_source(h)}" if "rel_l2_by_source" in h else "")
        for h in over) or None


def choose_entry_launch(spec: SweepSpec, trial, cal: Calibration, say) -> dict | None:
    """The chosen trial's launch judged over several sources (tune/launch_choice.py); when it
    differs from the trial's, the config is measured again on the calibration data with it."""
    sources = spec.launch_source_names()
    if not sources:
        return None
    cfg = TrialConfig.of_trial(trial)
    launch, record = launch_choice.choose_launch(cfg.params, cfg.launch, sources, shape=spec.shape(),
                                                 on_gpu=spec.on_gpu)
    say(f"launch over {len(sources)} sources: {launch.label()} (searched {cfg.launch.label()}; "
        f"worst {record['summary'][launch.label()]['worst']}x, geomean "
        f"{record['summary'][launch.label()]['geomean']}x the stock {record['stock']})")
    measured = {}
    if launch != cfg.launch:
        again = replace(cfg, launch=launch)
        plans = trial_plans(trial)
        with torch.no_grad():
            measured = (measure_layers(cal, again, plans, on_gpu=spec.on_gpu) if plans
                        else measure(cal, again, on_gpu=spec.on_gpu))
    return dict(launch=launch, record=record, measured=measured)


def held_out_line(held: dict, spec: SweepSpec) -> str:
    return (f"held out ({held['source']}): rel_l2 {held['rel_l2']:.4f} (calibration "
            f"{held['calibration_rel_l2']:.4f}; default {held['reference_rel_l2']}), "
            f"{'within' if held['within_bound'] else 'OVER'} the bound "
            f"({'the default there' if spec.bound_default else spec.max_error}"
            + (f" on each workload: {profiles.describe_by_source(held)}" if "rel_l2_by_source" in held else "") + "); "
            + (f"{held['speedup_vs_reference']}x the default's speed" if held['speedup_vs_reference']
               else "speed not compared (the interpreter's times mean nothing)"))


def run_worker(spec: SweepSpec) -> None:
    """A worker process: trials only, on the studies of every length; writes nothing else.
    It measures the default only to resolve --max-error default, and untimed."""
    progress.set_quiet(spec.quiet)
    for n, name in spec.study_names().items():
        one = spec.at(n)
        cal = one.calibration()
        if one.max_error is None:
            one = bound_by_default(one, reference_measurement(cal, one, timed=False))
        run_trials(open_study(one, name), objective_for(cal, one), one)
        del cal


def _run_workers(spec: SweepSpec, say) -> None:
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


def print_front(front, spec: SweepSpec, say):
    say("Pareto front (latency vs error):")
    say(f"  {'trial':>5} {'ms':>9} {'rel_l2':>8} {'recall':>7} {'density':>7}  block seg   thr  launch")
    for t in front:
        cfg, u = TrialConfig.of_trial(t), t.user_attrs
        p, launch = cfg.params, cfg.launch
        flag = "" if within_bound(u, spec) else "  (over bound)"
        say(f"  {t.number:>5} {t.values[0]:9.3f} {u['rel_l2']:8.4f} {u['recall']:7.4f} {u['density']:7.3f}"
            f"  {p.block_size:>5} {p.segment_size:>4} {p.threshold:.3f}  {launch.label()}{flag}")


def entry_line(e: ProfileEntry) -> str:
    m = e.measured
    sp = " ".join(f"{k}={v}x" for k, v in e.info.get("speedup", {}).items())
    return (f"{e.describe()}: {m['latency_ms']} ms, err {m['rel_l2']}, recall {m['recall']}, "
            f"density {m['density']} {sp}")
