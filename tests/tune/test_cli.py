"""pbs-tune command line: parsing, errors, a tiny sweep, resume, concurrent workers, capture."""
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

from pbs_tune.profile import profiles
from pbs_tune.cli import main
from helpers import tiny_llama_config

TINY = ["--heads", "2", "--kv-heads", "1", "--head-dim", "64", "--dtype", "float32", "--workload", "diffuse",
        "--max-error", "0.9"]


def sweep_args(tmp_path, *extra, seqlen="96", trials="3"):
    return ["sweep", "--gpu", "auto", "--seqlen", seqlen, "--trials", trials, *TINY,
            "--storage", f"sqlite:///{tmp_path}/study.db", "--profile", str(tmp_path / "cpu.yaml"), *extra]


def finished_trials(tmp_path):
    con = sqlite3.connect(tmp_path / "study.db")
    try:
        return con.execute("select number, state from trials").fetchall()
    except sqlite3.OperationalError:  # the worker has not created the schema yet
        return []
    finally:
        con.close()


@pytest.mark.parametrize("cmd", ["sweep", "show", "report", "capture", "compile", "plan", "relaunch"])
def test_every_subcommand_has_help_with_an_example(cmd):
    res = CliRunner().invoke(main, [cmd, "--help"])
    assert res.exit_code == 0 and "Example" in res.output


@pytest.mark.parametrize("args,code,msg", [
    (["--seqlen", "12q"], 2, "bad sequence length"),
    (["--seqlen", "0"], 2, "bad sequence length"),
    (["--seqlen", "1k", "--max-error", "0"], 2, "expected a number in (0, 1] or 'default'"),
    (["--seqlen", "1k", "--max-error", "paper"], 2, "expected a number in (0, 1] or 'default'"),
    (["--seqlen", "1k", "--estimators", "mean,max"], 2, "expected some of mean,lse"),
    (["--seqlen", "1k", "--samples", "2", "--calib", __file__], 1, "a --calib capture has its own"),
    (["--seqlen", "1k", "--heads", "3", "--kv-heads", "2"], 1, "multiple of --kv-heads"),
    (["--seqlen", "1k", "--heads", "4", "--kv-heads", "1", "--dtype", "bfloat16"], 1, "cannot run bfloat16"),
    # The interpreter refuses what it cannot finish (128k: hours, and the dense reference alone 64 GB a head).
    (["--seqlen", "128k", "--dtype", "float32"], 1, "131072 tokens x 32 query heads is beyond what the CPU "
                                                      "interpreter runs in reasonable time and memory"),
    (["--seqlen", "4k", "--heads", "8", "--kv-heads", "1", "--dtype", "float32"], 1, "(at most 4096 tokens and "
                                                                                      "16384 query heads x tokens)"),
])
def test_sweep_rejects_bad_arguments(tmp_path, args, code, msg):
    res = CliRunner().invoke(main, ["sweep", "--gpu", "auto", *args, "--storage", f"sqlite:///{tmp_path}/s.db"])
    assert res.exit_code == code, res.output
    assert msg in res.output
    assert "Traceback" not in res.output


def test_gpu_name_must_match_the_device(tmp_path):
    res = CliRunner().invoke(main, sweep_args(tmp_path)[:1] + ["--gpu", "a100"] + sweep_args(tmp_path)[3:])
    assert res.exit_code == 1
    assert "this machine has no GPU, only Triton's interpreter; try pbs-tune on this CPU with: " \
        "pbs-tune sweep --gpu cpu --seqlen 256" in res.output


def test_tiny_sweep_writes_a_valid_profile_and_show_prints_it(tmp_path):
    res = CliRunner().invoke(main, sweep_args(tmp_path, seqlen="96", trials="4"))
    assert res.exit_code == 0, res.output
    prof = profiles.load(str(tmp_path / "cpu.yaml"))
    (e,) = prof.entries
    assert (e.gpu, e.seqlen, e.heads, e.kv_heads, e.head_dim, e.dtype) == \
        ("cpu", 96, 2, 1, 64, "float32")
    assert e.params.segment_size % e.params.block_size == 0
    assert 0 <= e.measured["rel_l2"] <= 0.9 and 0 < e.measured["recall"] <= 1.0
    # The interpreter's times order the trials; no speed-up is derived from them, nor shown.
    assert "latency_ms" in e.info["reference"] and e.info["speedup"] == {}
    assert len([t for t in finished_trials(tmp_path) if t[1] == "COMPLETE"]) == 4
    shown = CliRunner().invoke(main, ["show", "--gpu", "cpu", "--profile", str(tmp_path / "cpu.yaml")])
    assert shown.exit_code == 0 and "96" in shown.output
    assert "vs_reference" not in res.output and "x the default" not in shown.output
    row = next(line for line in shown.output.splitlines() if line.strip().startswith("96"))
    assert row.split()[-2:] == ["-", "-"]  # x cudnn, x ref
    # The chosen config was checked on the workload's next seed and on the next seed of another
    # workload family (diffuse -> mixed), neither seen by a trial.
    same, other = e.info["held_out"]
    assert (same["source"], other["source"]) == ("workload:diffuse", "workload:mixed")
    assert same["calibration_rel_l2"] == e.measured["rel_l2"]
    from pbs_tune import pbs_attention
    from pbs_tune.measure.metrics import dense_reference, rel_l2
    from pbs_tune.measure.workloads import make_qkv
    for held, workload in ((same, "diffuse"), (other, "mixed")):
        q, k, v = make_qkv(workload, seqlen=96, heads=2, kv_heads=1, head_dim=64, dtype=torch.float32, device="cpu",
                           seed=1)
        out = pbs_attention(q, k, v, block_size=e.params.block_size, segment_size=e.params.segment_size,
                            threshold=e.params.threshold, launch=e.launch)
        assert abs(held["rel_l2"] - rel_l2(out, dense_reference(q, k, v))) < 1e-4
        assert held["within_bound"] == (held["rel_l2"] <= 0.9) and held["reference_rel_l2"] is not None
        assert f"held out (workload:{workload}): rel_l2 {held['rel_l2']:.4f}" in res.output
        assert f"held out (workload:{workload}): rel_l2 {held['rel_l2']:.4f}" in shown.output
    assert "launch_choice" not in e.info  # the interpreter's times mean nothing: no launch is judged on them


def test_relaunch_retimes_launches_and_keeps_the_tuned_parameters(tmp_path):
    assert CliRunner().invoke(main, sweep_args(tmp_path, seqlen="80", trials="2")).exit_code == 0
    (old,) = profiles.load(str(tmp_path / "cpu.yaml")).entries
    res = CliRunner().invoke(main, ["relaunch", "--profile", str(tmp_path / "cpu.yaml"), "--sources", "own",
                                    "--out", str(tmp_path / "relaunched.yaml")])
    assert res.exit_code == 0, res.output
    (new,) = profiles.load(str(tmp_path / "relaunched.yaml")).entries
    timed = new.info["relaunch"]["latency_ms"]
    assert old.launch.label() in timed and any(label.endswith("-tma") for label in timed)
    assert new.launch.label() == new.info["relaunch"]["chosen"] and new.launch.label() in timed
    assert new.params == old.params and new.key() == old.key()
    # every launch computes the same kept blocks exactly: the error does not move
    assert abs(new.measured["rel_l2"] - old.measured["rel_l2"]) < 1e-5
    assert new.measured["density"] == pytest.approx(old.measured["density"], abs=1e-4)
    assert new.info["speedup"] == {}  # interpreter times: no speed-up


def test_relaunch_refuses_entries_with_per_layer_plans(tmp_path):
    from pbs_tune.tune.relaunch import relaunch_entry
    entry = profiles.ProfileEntry(gpu="cpu", seqlen=64, heads=2, kv_heads=1, head_dim=64, dtype="float32",
                                  params=profiles.PbsParams(16, 32, 0.9), launch=profiles.LaunchConfig(16, 16, 4, 1),
                                  layers={0: profiles.DENSE})
    with pytest.raises(ValueError, match="has per-layer plans; re-plan it"):
        relaunch_entry(entry, None, arch=None, on_gpu=False)


def test_report_writes_png_and_markdown(tmp_path):
    assert CliRunner().invoke(main, sweep_args(tmp_path, trials="3")).exit_code == 0
    study = "cpu-96-2x1x64-float32-diffuse"
    res = CliRunner().invoke(main, ["report", "--storage", f"sqlite:///{tmp_path}/study.db", "--study", study,
                                    "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    png = tmp_path / "rep" / f"{study}-pareto.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (tmp_path / "rep" / f"{study}.md").read_text()
    assert "| trial |" in text and "held-out rel_l2" in text
    (held,) = [line for line in text.splitlines() if "| workload:diffuse |" in line]
    (e,) = profiles.load(str(tmp_path / "cpu.yaml")).entries
    assert held.startswith(f"| {e.info['trial']} |") and f"{e.info['held_out'][0]['rel_l2']:.4f}" in held
    assert held.count("|") == 10 and "x default" in text  # not timed in the interpreter: '-'


def _cli(tmp_path, *args):
    env = dict(os.environ, TRITON_INTERPRET="1")
    return subprocess.Popen([sys.executable, "-m", "pbs_tune.cli", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sweep_resumes_after_sigkill_without_losing_trials(tmp_path):
    args = sweep_args(tmp_path, seqlen="128", trials="8")
    proc = _cli(tmp_path, *args)
    deadline = time.time() + 240
    while time.time() < deadline:
        time.sleep(0.2)
        states = [s for _, s in finished_trials(tmp_path)] if os.path.exists(tmp_path / "study.db") else []
        if states.count("COMPLETE") >= 3 and "RUNNING" in states:  # mid-trial, so never after the end
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {n for n, s in finished_trials(tmp_path) if s == "COMPLETE"}
    assert len(before) >= 3
    assert not (tmp_path / "cpu.yaml").exists()
    done = _cli(tmp_path, *args)
    out, _ = done.communicate(timeout=600)
    assert done.returncode == 0, out
    after = finished_trials(tmp_path)
    assert before <= {n for n, s in after if s == "COMPLETE"}  # nothing finished was lost
    assert len([n for n, s in after if s in ("COMPLETE", "FAIL", "PRUNED")]) >= 8
    assert profiles.load(str(tmp_path / "cpu.yaml")).entries


def test_two_workers_share_one_sqlite_study(tmp_path):
    args = sweep_args(tmp_path, "--study", "shared", seqlen="128", trials="8")
    workers = [_cli(tmp_path, *args) for _ in range(2)]
    outs = [w.communicate(timeout=600)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), outs
    rows = finished_trials(tmp_path)
    numbers = [n for n, _ in rows]
    assert len(numbers) == len(set(numbers))          # no duplicated trial
    finished = [n for n, s in rows if s in ("COMPLETE", "FAIL", "PRUNED")]
    assert 8 <= len(finished) <= 9                     # each worker stops once the study holds 8
    assert len(profiles.load(str(tmp_path / "cpu.yaml")).entries) == 1


def capture_tiny_llama(tmp_path, text, *extra):
    """Save a 2-layer random Llama and capture 128 tokens of `text` with it: (result, calib path)."""
    transformers = pytest.importorskip("transformers")
    transformers.LlamaForCausalLM(tiny_llama_config(vocab_size=300)).save_pretrained(tmp_path / "model")
    (tmp_path / "book.txt").write_text(text)
    calib = tmp_path / "calib.safetensors"
    return CliRunner().invoke(main, ["capture", "--model", str(tmp_path / "model"), "--text", str(tmp_path / "book.txt"),
                                     "--seqlen", "128", "--out", str(calib), "--dtype", "float32", *extra]), calib


def test_capture_records_qkv_that_sweep_can_tune_on(tmp_path):
    res, calib = capture_tiny_llama(tmp_path, "It was a bright cold day in April. " * 20)
    assert res.exit_code == 0, res.output
    from safetensors.torch import load_file
    t = load_file(calib)
    assert sorted(t) == [f"layer00{i}.{x}" for i in range(2) for x in "kqv"]
    assert t["layer000.q"].shape == (2, 128, 64) and t["layer000.k"].shape == (1, 128, 64)
    args = [a for a in sweep_args(tmp_path, "--calib", str(calib)) if a not in ("--workload", "diffuse")]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert profiles.load(str(tmp_path / "cpu.yaml")).entries[0].info["calibration"].startswith("capture:")


def test_a_failing_trial_is_recorded_with_its_reason_and_the_sweep_goes_on(tmp_path, monkeypatch):
    import optuna
    from pbs_tune.tune import sweep as sweep_mod
    real = sweep_mod.measure
    calls = {"n": 0}

    def flaky(cal, cfg, on_gpu, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # the first call is the reference measurement, then trial 0
            raise RuntimeError("out of resources: shared memory")
        return real(cal, cfg, on_gpu=on_gpu, **kw)
    monkeypatch.setattr(sweep_mod, "measure", flaky)
    res = CliRunner().invoke(main, sweep_args(tmp_path, trials="4"))
    assert res.exit_code == 0, res.output
    study = optuna.load_study(study_name="cpu-96-2x1x64-float32-diffuse", storage=f"sqlite:///{tmp_path}/study.db")
    states = [t.state.name for t in study.trials]
    assert states.count("FAIL") == 1 and states.count("COMPLETE") == 3
    failed = next(t for t in study.trials if t.state.name == "FAIL")
    assert failed.user_attrs["fail_reason"] == "RuntimeError: out of resources: shared memory"


@pytest.mark.parametrize("url,msg", [
    ("bogus://x", "unknown database kind 'bogus'"),
    ("not a url", "is not a database URL"),
    ("sqlite:////nonexistent-folder/x/study.db", "folder /nonexistent-folder/x does not exist"),
    ("postgresql+psycopg://u:secret@127.0.0.1:1/db", "--storage"),
])
def test_bad_storage_is_one_line_before_any_work(tmp_path, url, msg):
    res = CliRunner().invoke(main, sweep_args(tmp_path)[:-4] + ["--storage", url, "--profile", str(tmp_path / "p.yaml")])
    assert res.exit_code == 1, res.output
    assert msg in res.output and "Traceback" not in res.output and "secret" not in res.output
    assert len(res.output.strip().splitlines()) == 1  # before the first length's header: no work done
    assert not (tmp_path / "p.yaml").exists()


def test_python_dash_m_runs_the_cli(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pbs_tune", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "sweep" in out.stdout


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
    import optuna
    from pbs_tune.tune.sweep import finished_count
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path}/study.db"
    else:
        url = _postgres_url(request.getfixturevalue("postgres_server"), f"kill_{os.getpid()}")
    args = sweep_args(tmp_path, "--study", "shared", "--workers", "2", "--heartbeat", "1", seqlen="128",
                      trials="12")
    args[args.index("--storage") + 1] = url
    parent = _cli(tmp_path, *args)
    started = ""
    while "started 2 workers" not in started:
        started = parent.stdout.readline()
        assert started, "the sweep ended before starting its workers"
    victim = int(started.split("pids")[1].split()[0])
    study = None
    deadline = time.time() + 300
    while time.time() < deadline:
        time.sleep(0.3)
        try:
            study = study or optuna.load_study(study_name="shared", storage=url)
        except KeyError:
            continue
        running = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                   if f":{victim}:" in t.user_attrs.get("worker", "")]
        if running and len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))) >= 2:
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
    assert entry.seqlen == 128


def test_per_head_sweep_writes_a_plan_per_captured_layer_and_per_head_on_a_workload(tmp_path):
    res, calib = capture_tiny_llama(tmp_path, "def f(x):\n    return x + 1\n" * 20, "--layers", "1")
    assert res.exit_code == 0, res.output
    args = [a for a in sweep_args(tmp_path, "--calib", str(calib), "--per-head", "--margin", "0.9", "--estimators",
                                  "mean", seqlen="128", trials="2") if a not in ("--workload", "diffuse")]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    (e,) = profiles.load(str(tmp_path / "cpu.yaml")).entries
    assert list(e.layers) == [1]  # the captured layer, by its index in the model
    params, launch = e.layers[1]
    assert isinstance(params.threshold, tuple) and len(params.threshold) == 2 and isinstance(params.permute, bool)
    assert e.info["per_head"]["margin"] == 0.9 and "heaviest keys" in e.info["per_head"]["bound"]
    assert "held_out" not in e.info  # a capture is checked only on a capture of other text
    assert e.info["study"].endswith("-per-head")  # the published estimator alone: the earlier study name
    shown = CliRunner().invoke(main, ["show", "--gpu", "cpu", "--profile", str(tmp_path / "cpu.yaml")])
    assert shown.exit_code == 0 and "layer 1: " in shown.output and "permuted" in shown.output
    assert f"permuted {params.estimator} " in shown.output  # the layer's estimator is shown
    res = CliRunner().invoke(main, sweep_args(tmp_path, "--per-head", "--samples", "2", "--estimators", "mean",
                                              seqlen="96", trials="2"))
    assert res.exit_code == 0, res.output
    workload = [x for x in profiles.load(str(tmp_path / "cpu.yaml")).entries if x.seqlen == 96][0]
    assert isinstance(workload.params.threshold, tuple) and not workload.layers
    # Two samples of the workload: the plan was fitted leaving each out; its study is not a 1-sample one.
    assert workload.info["samples"] == 2 and "-x2-per-head" in workload.info["study"]
    assert [h["source"] for h in workload.info["held_out"]] == ["workload:diffuse x2", "workload:mixed x2"]


def test_max_error_default_bounds_trials_by_the_published_default_there(tmp_path):
    args = [a for a in sweep_args(tmp_path, seqlen="96", trials="3") if a not in ("--max-error", "0.9")]
    res = CliRunner().invoke(main, args + ["--max-error", "default"])
    assert res.exit_code == 0, res.output
    (e,) = profiles.load(str(tmp_path / "cpu.yaml")).entries
    bound = e.info["reference"]["rel_l2"]
    assert round(e.info["max_error"], 5) == bound and e.info["max_error_is_default"]
    assert f"error bound: the default's on this data, rel_l2 {bound:.5f}" in res.output
    assert e.measured["rel_l2"] <= e.info["max_error"]
    held = e.info["held_out"][0]  # on the next seed the bound is the default's error there
    assert held["within_bound"] == (held["rel_l2"] <= held["reference_rel_l2"])


def test_on_every_family_the_default_bounds_each_family_not_their_average(tmp_path):
    args = [{"diffuse": "families", "0.9": "default"}.get(a, a) for a in sweep_args(tmp_path, seqlen="96", trials="2")]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    (e,) = profiles.load(str(tmp_path / "cpu.yaml")).entries
    bounds, mine = e.info["max_error_by_source"], e.info["rel_l2_by_source"]
    assert set(bounds) == set(mine) == {"sink_local", "stripes", "retrieval", "diffuse", "mixed"}
    assert bounds == {k: round(v, 5) for k, v in e.info["reference"]["rel_l2_by_source"].items()}
    assert all(mine[k] <= bounds[k] + 1e-5 for k in bounds), (mine, bounds)
    assert "and on each workload: sink_local" in res.output
    (held,) = e.info["held_out"]  # the next seed of every family
    assert held["source"] == "workload:families"
    assert held["within_bound"] == all(held["rel_l2_by_source"][k] <= held["reference_rel_l2_by_source"][k]
                                       for k in bounds)
    line = f"sink_local {held['rel_l2_by_source']['sink_local']:.4f} (default "
    shown = CliRunner().invoke(main, ["show", "--gpu", "cpu", "--profile", str(tmp_path / "cpu.yaml")])
    assert "by workload: " + line in shown.output, shown.output
    res = CliRunner().invoke(main, ["report", "--storage", f"sqlite:///{tmp_path}/study.db", "--study", e.info["study"],
                                    "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    assert line in (tmp_path / "rep" / f"{e.info['study']}.md").read_text()
    from pbs_tune.tune.relaunch import calibration_for
    again = calibration_for(e, "cpu")  # relaunch re-times the entry on the same five workloads
    assert again.sources == tuple(bounds) and again.q.shape[0] == 5


def test_a_bound_per_source_is_met_only_on_every_source():
    from pbs_tune.tune.sweep import SweepSpec, bound_excess
    spec = SweepSpec(gpu="cpu", seqlens=(96,), profile="p.yaml", storage="sqlite://", max_error=0.1,
                     bound_default=True, source_bounds=dict(a=0.01, b=0.2))
    assert bound_excess(dict(rel_l2=0.05, rel_l2_by_source=dict(a=0.01, b=0.1)), spec) == 0.0
    assert bound_excess(dict(rel_l2=0.05, rel_l2_by_source=dict(a=0.015, b=0.1)), spec) == pytest.approx(0.5)
    assert bound_excess(dict(rel_l2=0.3), spec) == pytest.approx(0.2)  # measured on one source: its error


def test_a_capture_sweep_is_checked_on_a_capture_of_other_text(tmp_path, monkeypatch):
    res, calib = capture_tiny_llama(tmp_path, "def f(x):\n    return x + 1\n" * 20, "--layers", "1")
    assert res.exit_code == 0, res.output
    held_file = calib.rename(tmp_path / "held.safetensors")
    res, calib = capture_tiny_llama(tmp_path, "class A:\n    pass\n" * 40, "--layers", "1", "--sequences", "2")
    assert res.exit_code == 0, res.output
    calib = calib.rename(tmp_path / "train.safetensors")
    from pbs_tune.tune import allocate
    seen = []
    real = allocate.layer_curves
    monkeypatch.setattr(allocate, "layer_curves", lambda q, *a, **kw: seen.append(q.shape[0]) or real(q, *a, **kw))
    args = [a for a in sweep_args(tmp_path, "--calib", str(calib), "--per-head", seqlen="128", trials="1")
            if a not in ("--workload", "diffuse")]
    res = CliRunner().invoke(main, args + ["--holdout-calib", str(held_file)])
    assert res.exit_code == 0, res.output
    assert seen and set(seen) == {2}  # the layer's curves over both captured sequences: checked leaving one out
    (e,) = profiles.load(str(tmp_path / "cpu.yaml")).entries
    assert list(e.layers) == [1]
    assert e.info["study"].endswith("-per-head-mean-lse") and e.layers[1][0].estimator in ("mean", "lse")
    (margin,) = e.info["per_head"]["margins_used"]
    assert 0.0 <= margin <= 0.95
    (held,) = e.info["held_out"]  # the single-sequence capture of other text, same layer
    assert held["source"] == f"capture:{held_file}" and held["rel_l2"] >= 0 and held["reference_rel_l2"] >= 0
    # Layers that differ (found before any trial runs), or a held-out file without --calib: one line each.
    res, other = capture_tiny_llama(tmp_path, "x = 1\n" * 80, "--layers", "0")
    res = CliRunner().invoke(main, args + ["--holdout-calib", str(other), "--study", "never-run"])
    assert res.exit_code == 1 and "capture the same --layers" in res.output and "Traceback" not in res.output
    assert "never-run" not in res.output  # no study was opened
    res = CliRunner().invoke(main, sweep_args(tmp_path, "--holdout-calib", str(held_file)))
    assert res.exit_code == 1 and "--holdout-calib checks a --calib sweep" in res.output


def test_several_captured_sequences_are_read_layer_after_layer(tmp_path):
    res, calib = capture_tiny_llama(tmp_path, "def f(x):\n    return x + 1\n" * 20, "--sequences", "2")
    assert res.exit_code == 0, res.output
    assert "(2 sequences)" in res.output
    from safetensors.torch import load_file
    t = load_file(calib)
    assert t["layer001.q"].shape == (2, 2, 128, 64) and t["layer001.k"].shape == (2, 1, 128, 64)
    assert not torch.equal(t["layer001.q"][0], t["layer001.q"][1])  # two windows of the text
    from pbs_tune.tune import evaluate
    cal = evaluate.load_calibration(seqlen=128, heads=2, kv_heads=1, head_dim=64, dtype=torch.float32,
                                    device="cpu", calib_file=str(calib))
    assert (cal.layers, cal.samples, cal.layer_ids) == (2, 2, (0, 1))
    assert torch.equal(cal.q[cal.layer(1)], t["layer001.q"])
    # Too little text for the windows asked: one line.
    res, _ = capture_tiny_llama(tmp_path, "x = 1\n" * 30, "--sequences", "3")
    assert res.exit_code == 1 and "fewer than --sequences 3 x --seqlen 128" in res.output
