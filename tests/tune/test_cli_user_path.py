"""A new user's path through the CLI: progress and --quiet, --json, shapes from a capture, one line
for every bad file, report beside its study, an empty profile refused."""
import json
import os

import pytest
from click.testing import CliRunner

from pbs_tune.cli import main
from test_cli import capture_tiny_llama, sweep_args


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
