"""scripts/bench_gpu.sh, the one entry for the GPU benchmarks, on the CPU: it lists every step that
benchmarks/README.md's "How to reproduce" table runs, refuses an unknown step in one line, calls only
modules and flags that exist (DRY_RUN=1 prints its commands), names its files <gpu>_<step>_<date>_<part>,
skips a GPU step in one line, and runs the tiny CPU case of `op` to the file it names."""
import glob
import json
import os
import re
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "bench_gpu.sh")
cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="names files 'cpu_...' and skips GPU steps")


def _run(*args, **env):
    full = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PARTS", "DRY_RUN", "AB_DIR")}
    full.update(PYTHON=sys.executable, **env)
    return subprocess.run(["bash", SCRIPT, *args], env=full, capture_output=True, text=True, timeout=300)


def _readme_table():
    text = open(os.path.join(ROOT, "benchmarks", "README.md"), encoding="utf-8").read()
    return text.split("## How to reproduce", 1)[1]


def test_help_lists_every_step_and_part_the_readme_runs():
    done = _run("--help")
    assert done.returncode == 0 and not done.stderr
    listed = dict(re.findall(r"^  (\w+)\s+\S.*\n\s+parts: (.*)$", done.stdout, re.M))
    table = _readme_table()
    steps = set(re.findall(r"bash scripts/bench_gpu\.sh ([a-z_]+(?: [a-z_]+)*)", table))
    steps = {s for group in steps for s in group.split()}
    assert steps and steps <= set(listed), steps - set(listed)
    parts = {p.strip("*") for line in listed.values() for p in line.split()}
    named = {p for group in re.findall(r"PARTS=([\w,]+)", table) for p in group.split(",")}
    assert named <= parts, named - parts
    assert "  all " in done.stdout
    assert _run().returncode == 2  # no step: the same list, and nothing run


def test_an_unknown_step_or_part_is_one_line_and_a_failure():
    done = _run("op", "nonesuch")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "unknown step 'nonesuch'" in done.stderr
    done = _run("op", PARTS="nonesuch")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "unknown part 'nonesuch'" in done.stderr


def _flags_of(path):
    return set(re.findall(r"\"(--[a-z][a-z0-9-]*)\"", open(path, encoding="utf-8").read()))


@cpu_only
def test_every_step_calls_modules_and_flags_that_exist_and_names_its_files(tmp_path):
    done = _run("all", DRY_RUN="1", OUT=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert not os.listdir(tmp_path)  # a dry run writes nothing
    cli = set().union(*(_flags_of(p) for p in glob.glob(os.path.join(ROOT, "pbs_tune", "cli*.py")) +
                        glob.glob(os.path.join(ROOT, "pbs_tune", "cli", "*.py"))))
    seen = set()
    for step, part, cmd in re.findall(r"^== (\w+) (\w+): (.*)$", done.stdout, re.M):
        seen.add(step)
        words = cmd.split()
        for i, word in enumerate(words[:-1]):
            if word == "-m" and words[i + 1].startswith("pbs_tune.bench."):
                module = os.path.join(ROOT, *words[i + 1].split(".")) + ".py"
                assert os.path.isfile(module), cmd
                flags = _flags_of(module)
            elif word == "-m" and words[i + 1] == "pbs_tune":
                flags = cli
            else:
                continue
            wrong = {w for w in words[i + 2:] if w.startswith("--") and w not in flags}
            assert not wrong, (cmd, wrong)
        for path in re.findall(r"(?:--out|--profile|czf) " + re.escape(str(tmp_path)) + r"/(\S+)", cmd):  # written
            assert re.fullmatch(rf"cpu_{step}_\d{{4}}-\d\d-\d\d_{part}[\w.-]*", path), (path, cmd)
    assert seen == {"op", "kernels", "tuning", "traffic", "chunks", "models", "libraries"}


@cpu_only
def test_a_gpu_step_without_a_gpu_says_so_in_one_line(tmp_path):
    done = _run("kernels", OUT=str(tmp_path))
    assert done.returncode == 0 and not done.stderr
    assert done.stdout.count("\n") == 1 and "kernels needs a CUDA GPU" in done.stdout
    assert not os.listdir(tmp_path)


@cpu_only
def test_op_runs_its_tiny_cpu_case_to_the_file_it_names(tmp_path):
    done = _run("op", OUT=str(tmp_path), TRITON_INTERPRET="1", LENGTHS="128", SHAPE="1/1/64")
    assert done.returncode == 0, done.stdout + done.stderr
    [result] = glob.glob(str(tmp_path / "cpu_op_*_knobs.jsonl"))
    assert re.fullmatch(r"cpu_op_\d{4}-\d\d-\d\d_knobs\.jsonl", os.path.basename(result))
    [row] = [json.loads(line) for line in open(result)]
    assert row["n"] == 128 and row["knobs"] == "default" and row["device"] == "cpu" and row["rel_l2"] < 1e-5
    assert os.path.isfile(result.replace("_knobs.jsonl", ".log"))
