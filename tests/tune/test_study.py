"""The study's bookkeeping, with trials that run a stand-in measurement (helpers.stand_in_measure)
instead of kernels: a killed sweep resumes without losing trials, workers share one study in SQLite
and PostgreSQL, a killed worker's trial is failed for its stale heartbeat and run again, and a
failing trial is recorded with its reason."""
import os
import signal
import time

import optuna
import pytest

from helpers import finished_trials, stand_in_measure, stand_in_spec, sweep_process
from pbs_tune.profile import profiles
from pbs_tune.tune.study import finished_count
from pbs_tune.tune.sweep import run_sweep


def test_sweep_resumes_after_sigkill_without_losing_trials(tmp_path):
    spec = stand_in_spec(tmp_path, trials=8)
    proc = sweep_process(spec)
    deadline = time.time() + 240
    while time.time() < deadline:
        time.sleep(0.1)
        states = [s for _, s in finished_trials(tmp_path)] if os.path.exists(tmp_path / "study.db") else []
        if states.count("COMPLETE") >= 3 and "RUNNING" in states:  # mid-trial, so never after the end
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {n for n, s in finished_trials(tmp_path) if s == "COMPLETE"}
    assert len(before) >= 3
    assert not (tmp_path / "cpu.yaml").exists()
    done = sweep_process(spec)
    out, _ = done.communicate(timeout=600)
    assert done.returncode == 0, out
    after = finished_trials(tmp_path)
    assert before <= {n for n, s in after if s == "COMPLETE"}  # nothing finished was lost
    assert len([n for n, s in after if s in ("COMPLETE", "FAIL", "PRUNED")]) >= 8
    assert profiles.load(str(tmp_path / "cpu.yaml")).entries


def test_two_sweeps_share_one_sqlite_study(tmp_path):
    spec = stand_in_spec(tmp_path, study="shared", trials=8)
    sweeps = [sweep_process(spec) for _ in range(2)]
    outs = [w.communicate(timeout=600)[0] for w in sweeps]
    assert all(w.returncode == 0 for w in sweeps), outs
    rows = finished_trials(tmp_path)
    numbers = [n for n, _ in rows]
    assert len(numbers) == len(set(numbers))          # no duplicated trial
    finished = [n for n, s in rows if s in ("COMPLETE", "FAIL", "PRUNED")]
    assert 8 <= len(finished) <= 9                     # each sweep stops once the study holds 8
    assert len(profiles.load(str(tmp_path / "cpu.yaml")).entries) == 1


def test_a_failing_trial_is_recorded_with_its_reason_and_the_sweep_goes_on(tmp_path):
    spec = stand_in_spec(tmp_path, trials=4, stand_in="test_study:fails_at_second_call")
    (entry,) = run_sweep(spec, say=lambda line: None)
    study = optuna.load_study(study_name="cpu-64-2x1x64-float32-diffuse", storage=spec.storage)
    states = [t.state.name for t in study.trials]
    assert states.count("FAIL") == 1 and states.count("COMPLETE") == 3
    failed = next(t for t in study.trials if t.state.name == "FAIL")
    assert failed.user_attrs["fail_reason"] == "RuntimeError: out of resources: shared memory"
    assert entry.provenance.trial != failed.number


CALLS = []


def fails_at_second_call(cal, cfg, **kw):
    """The stand-in measurement, failing once: the first call is the default's, then trial 0."""
    from helpers import stand_in_measure
    CALLS.append(cfg)
    if len(CALLS) == 2:
        raise RuntimeError("out of resources: shared memory")
    return stand_in_measure(cal, cfg, **kw)


@pytest.fixture(scope="module")
def postgres_server(tmp_path_factory):
    """A real PostgreSQL server (pgserver's self-contained binaries), for this module's tests."""
    import pgserver
    server = pgserver.get_server(str(tmp_path_factory.mktemp("pg")), cleanup_mode="stop")
    yield server
    server.cleanup()


def _postgres_url(server, database):
    server.psql(f"create database {database};")
    url = server.get_uri().replace("postgresql://", "postgresql+psycopg://", 1)
    head, _, query = url.partition("?")
    return head.rsplit("/", 1)[0] + f"/{database}?" + query


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_workers_share_a_study_and_survive_a_sigkill(tmp_path, request, backend):
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path}/study.db"
    else:
        url = _postgres_url(request.getfixturevalue("postgres_server"), f"kill_{os.getpid()}")
    parent = sweep_process(stand_in_spec(tmp_path, storage=url, study="shared", workers=2, trials=12,
                                         stand_in="helpers:held_stand_in_measure"),
                           PBS_TUNE_TEST_HOLD=str(tmp_path))
    started = ""
    while "started 2 workers" not in started:
        started = parent.stdout.readline()
        assert started, "the sweep ended before starting its workers"
    victim = int(started.split("pids")[1].split()[0])
    (tmp_path / f"hold-{victim}").touch()  # the victim stops inside its next trial and waits there
    deadline = time.time() + 300
    while time.time() < deadline:
        time.sleep(0.1)
        assert parent.poll() is None, "the sweep ended before a trial of the victim's was seen running"
        if not (tmp_path / f"in-trial-{victim}").exists():
            continue
        try:
            study = optuna.load_study(study_name="shared", storage=url)
        except KeyError:
            continue
        if len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))) >= 2:
            break
    os.kill(victim, signal.SIGKILL)  # in the middle of its trial
    out = started + parent.communicate(timeout=600)[0]
    assert parent.returncode == 0, out
    assert f"(pid {victim}) ended with status -9" in out
    trials = optuna.load_study(study_name="shared", storage=url).get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))                         # nothing counted twice
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]  # nothing left behind
    assert 12 <= finished_count(optuna.load_study(study_name="shared", storage=url)) <= 13
    retried = {optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t): t for t in trials}
    # The trial seen running may have finished just before the signal; the killed one is the
    # victim's trial that its stale heartbeat failed.
    (killed,) = [t.number for t in trials if f":{victim}:" in t.user_attrs.get("worker", "")
                 and t.state.name == "FAIL"]
    assert trials[killed].state.name == "FAIL"                           # failed for its stale heartbeat,
    assert retried[killed].state.name == "COMPLETE"                      # and run again to the end
    # with the parameters it had drawn (a worker killed while a trial was still drawing leaves fewer)
    assert trials[killed].params.items() <= retried[killed].params.items()
    (entry,) = profiles.load(str(tmp_path / "cpu.yaml")).entries         # the profile is whole
    assert entry.seqlen == 64


def fits_its_sample_only(cal, cfg, *, target, timed=True):
    """The stand-in measurement, except that on held-out data (another seed of the workload) every
    config but the published default is over the bound: choices fitted to their own sample."""
    from pbs_tune.tune.space import searched_default
    m = stand_in_measure(cal, cfg, target=target, timed=timed, seconds=0.05)
    if not str(cal.source).endswith("@0") and cfg.params != searched_default(target):
        m["rel_l2"] = 0.95
    return m


def test_a_choice_over_its_bound_on_held_out_data_gives_way_to_the_next_candidates(tmp_path):
    from pbs_tune.tune.objective import HELD_OUT_RETRIES, candidates
    from pbs_tune.tune.space import searched_default
    lines = []
    spec = stand_in_spec(tmp_path, trials=10, stand_in="test_study:fits_its_sample_only", max_error=0.5)
    (entry,) = run_sweep(spec, say=lines.append)
    default = searched_default(spec.target)
    assert entry.failed_check is None and entry.params == default
    assert all(h.within_bound for h in entry.provenance.held_out)
    study = optuna.load_study(study_name="cpu-64-2x1x64-float32-diffuse", storage=spec.storage)
    tried = candidates(study, spec)
    retried = [line for line in lines if "over its bound on held-out data" in line]
    assert len(retried) == [t.number for t in tried].index(entry.provenance.trial) <= HELD_OUT_RETRIES + 1
