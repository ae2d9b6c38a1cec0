"""A new user's path through the CLI: progress and --quiet, --json, shapes from a capture, one line
for every bad file, report beside its study, an empty profile refused."""
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from click.testing import CliRunner

from pbs_tune.cli import main
from helpers import capture_tiny_llama, sweep_args

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(args):
    return CliRunner().invoke(main, args)


def test_sweep_json_summary_is_the_only_stdout_and_quiet_silences_progress(tmp_path):
    res = run(sweep_args(tmp_path, "--json", "--quiet", trials="2"))
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["profile"] == str(tmp_path / "cpu.yaml") and summary["entries"][0]["seqlen"] == 96
    assert "pbs-tune:" not in res.stderr and "trials, best feasible" not in res.stderr
    loud = run(sweep_args(tmp_path, "--seqlen", "64", trials="1"))
    assert "pbs-tune: trial 0:" in loud.stderr and "running the op for accuracy" in loud.stderr
    shown = json.loads(run(["show", "--gpu", "cpu", "--profile", str(tmp_path / "cpu.yaml"), "--json"]).stdout)
    assert sorted(e["seqlen"] for e in shown["entries"]) == [64, 96]


def test_sweep_reads_the_shape_from_the_capture(tmp_path):
    res, calib = capture_tiny_llama(tmp_path, "It was a bright cold day in April. " * 20)
    assert res.exit_code == 0 and "capture: prefill of 128 tokens, sequence 1/1" in res.stderr
    base = ["sweep", "--gpu", "auto", "--seqlen", "96", "--trials", "1", "--max-error", "0.9", "--calib", str(calib),
            "--storage", f"sqlite:///{tmp_path}/study.db", "--profile", str(tmp_path / "cpu.yaml")]
    res = run(base)  # no --heads/--kv-heads/--head-dim/--dtype: the capture's 2/1/64 float32
    assert res.exit_code == 0, res.output
    assert "96 2/1/64 float32" in res.stdout
    res = run(base + ["--heads", "4"])
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "--heads 4 but" in res.output


@pytest.mark.parametrize("content", [b"not safetensors at all", b"", b"\xff" * 64])
def test_a_calibration_file_that_is_not_a_capture_is_one_line(tmp_path, content):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(content)
    res = run(sweep_args(tmp_path, "--calib", str(bad)))
    assert res.exit_code == 1 and res.output.count("\n") == 1
    assert "is not a safetensors capture" in res.output and "Traceback" not in res.output


def test_report_writes_beside_its_study_and_never_creates_files_for_a_missing_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = run(["report", "--storage", f"sqlite:///{tmp_path}/nothing.db", "--study", "x"])
    assert res.exit_code == 1 and "no study database" in res.output
    assert os.listdir(tmp_path) == []
    assert run(sweep_args(tmp_path, trials="2")).exit_code == 0
    before = sorted(os.listdir(tmp_path))
    res = run(["report", "--storage", f"sqlite:///{tmp_path}/study.db", "--study", "no-such-study"])
    assert res.exit_code == 1 and "no study named" in res.output and sorted(os.listdir(tmp_path)) == before
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    res = run(["report", "--storage", f"sqlite:///{tmp_path}/study.db", "--study", "cpu-96-2x1x64-float32-diffuse"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "cpu-96-2x1x64-float32-diffuse.md").exists() and os.listdir(other) == []


def test_an_empty_profile_is_an_error(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    res = run(["show", "--gpu", "cpu", "--profile", str(tmp_path / "empty.yaml")])
    assert res.exit_code == 1 and "holds no entries" in res.output


def test_without_a_gpu_the_first_message_is_a_whole_command_that_runs_here(tmp_path):
    """Not one flag at a time (TRITON_INTERPRET, then --gpu, then --dtype, then an OOM kill): one line
    with a command at sizes the interpreter finishes, the README try-out's."""
    env = dict(os.environ, TRITON_INTERPRET="0", PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    done = subprocess.run([sys.executable, "-m", "pbs_tune", "sweep", "--gpu", "a100", "--seqlen", "128k"], env=env,
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    hint = done.stderr.split("try pbs-tune on this CPU with: ")[1].split()
    assert hint[:4] == ["TRITON_INTERPRET=1", "pbs-tune", "sweep", "--gpu"]
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    try_out = readme.split("<!-- cpu-try:start -->")[1].split("<!-- cpu-try:end -->")[0].replace("\\\n", " ").split()
    flags = hint[hint.index("--seqlen"):]
    assert " ".join(flags) in " ".join(try_out)  # the sizes the README's try-out runs (tested there)
    under_interpreter = run(["sweep", "--gpu", "a100", "--seqlen", "128k"])  # the interpreter is on in the tests
    assert under_interpreter.exit_code == 1 and " ".join(hint[1:]) in under_interpreter.output


@pytest.mark.parametrize("content,msg", [
    (None, "no such profile"), ("", "holds no entries"), (b"\xff\xfe" * 40, "is not a text file"),
    ("dir", "is a directory"), ("bad threshold", "params.threshold must be a number in (0, 1]"),
])
def test_show_reads_the_named_file_first_and_needs_no_gpu(tmp_path, content, msg):
    path = tmp_path / "p.yaml"
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "bad threshold":  # a shipped profile with one value out of range
        shipped = open(os.path.join(ROOT, "configs", "h100-sxm.yaml")).read()
        path.write_text(shipped.replace("threshold: 0.9", "threshold: 1.7", 1))
    elif content is not None:
        path.write_text(content)
    res = run(["show", "--profile", str(path)])
    assert res.exit_code == 1 and res.output.count("\n") == 1 and msg in res.output, res.output
    assert "no GPU here" not in res.output


def test_show_of_a_shipped_profile_file_imports_no_torch():
    code = ("import sys; from pbs_tune.cli import main; main(['show', '--profile', %r], standalone_mode=False); "
            "print('torch imported:', 'torch' in sys.modules)" % os.path.join(ROOT, "configs", "h100-sxm.yaml"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    entries = yaml.safe_load(open(os.path.join(ROOT, "configs", "h100-sxm.yaml")))["entries"]
    assert f"h100-sxm.yaml: {len(entries)} entries" in out and out.strip().endswith("torch imported: False")


def test_show_says_when_it_shows_another_variant_and_refuses_an_ignored_flag():
    res = run(["show", "--gpu", "h100-pcie"])
    assert res.exit_code == 0 and "h100-sxm.yaml" in res.stdout
    assert "note: no profile of h100-pcie" in res.stderr and "tuned for another variant" in res.stderr
    res = run(["show", "--gpu", "a100"])  # an untuned profile of another variant: never called tuned
    assert res.exit_code == 0 and "made for another variant" in res.stderr and "NOT TUNED" in res.stdout
    assert "tuned for another" not in res.stderr
    res = run(["show", "--gpu", "h100-sxm", "--seqlen", "4k"])
    assert res.exit_code == 1 and "--seqlen picks the entry a model shape runs" in res.output
    res = run(["show", "--gpu", "a100", "--profile", os.path.join(ROOT, "configs", "h100-sxm.yaml")])
    assert res.exit_code == 1 and "has no entries for a100 (it holds h100-sxm)" in res.output
    res = run(["show", "--gpu", "rtx4090"])  # a GPU without a profile: the ones there are, and how to make one
    shipped = sorted(name[:-5] for name in os.listdir(os.path.join(ROOT, "configs")) if name.endswith(".yaml"))
    assert res.exit_code == 1 and "profiles here: " in res.output and all(name in res.output for name in shipped)
    assert "pbs-tune sweep --gpu rtx4090" in res.output and len(res.output.strip().splitlines()) == 1


def test_a_finished_sweep_says_so_and_an_entry_failing_its_held_out_check_is_written_but_never_run(
        tmp_path, monkeypatch, caplog):
    import dataclasses

    import pbs_tune
    from pbs_tune.profile import profiles
    from pbs_tune.tune import sweep as sweep_module
    real_check = sweep_module.held_out_check

    def over_the_bound(*args, **kwargs):
        return dataclasses.replace(real_check(*args, **kwargs), rel_l2=0.95, within_bound=False)
    monkeypatch.setattr(sweep_module, "held_out_check", over_the_bound)
    args = sweep_args(tmp_path, seqlen="64", trials="2")
    first = run(args)
    assert first.exit_code == 0, first.output
    assert "written but never run by the loader: held out (workload:diffuse): rel_l2 0.9500 over the bound 0.9" \
        in first.output
    # Only as many known configs are queued as the study runs: nothing is left WAITING.
    import sqlite3
    con = sqlite3.connect(tmp_path / "study.db")
    assert con.execute("select state, count(*) from trials group by state").fetchall() == [("COMPLETE", 2)]
    con.close()
    path = tmp_path / "cpu.yaml"
    (entry,) = profiles.load(str(path)).entries
    assert entry.failed_check.startswith("held out (workload:diffuse): rel_l2 0.9500 over the bound 0.9")
    shown = run(["show", "--profile", str(path)])
    assert "NEVER RUN (failed its held-out check): held out (workload:diffuse)" in shown.output
    with pytest.raises(profiles.ProfileError, match="no entries for cpu that passed their held-out check"):
        pbs_tune.tuned_attention(*(torch.randn(1, 2, 64, 64),) * 3, profile=pbs_tune.load_profile(str(path)))
    assert "the entry 64 2/1/64 float32" in caplog.text and "is never run: held out" in caplog.text

    before = path.read_bytes()
    again = run(args)
    assert again.exit_code == 0 and "already holds its 2 trials" in again.output and "--rewrite" in again.output
    assert path.read_bytes() == before and "trial 2" not in again.output
    rewritten = run(args + ["--rewrite"])
    assert rewritten.exit_code == 0 and "wrote 1 entry" in rewritten.output and path.read_bytes() != before
