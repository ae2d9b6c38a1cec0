"""The README's "Try it on a CPU" block runs as written: from the checkout, after the set-up, with
pbs-tune reached through the set-up's environment (not already on PATH)."""
import glob
import os
import re
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_readme_cpu_try_out_runs_and_writes_a_profile(tmp_path):
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    block = re.search(r"<!-- cpu-try:start -->\s*```bash\n(.*?)```\s*<!-- cpu-try:end -->", text, re.S).group(1)
    assert os.path.isfile(os.path.join(ROOT, ".venv", "bin", "activate")), "run bash scripts/setup.sh first"
    venv_bin = os.path.dirname(sys.executable)
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if os.path.abspath(p) != venv_bin)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "TRITON_INTERPRET")}
    env.update(PATH=path, TMPDIR=str(tmp_path))  # the block's mktemp -d folder lands under tmp_path
    done = subprocess.run(["bash", "-e", "-c", block], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (written,) = glob.glob(str(tmp_path / "*" / "try.yaml"))
    entries = yaml.safe_load(open(written).read())["entries"]
    assert [e["seqlen"] for e in entries] == [384]
    assert "try.yaml: 1 entries" in done.stdout
    assert "pbs-tune: trial 0:" in done.stderr  # progress inside the sweep, on stderr
    assert "x the default" not in done.stdout + done.stderr and "vs_reference" not in done.stdout
    # It shows what PBS does: blocks dropped at a small, nonzero error, on a kernel the CPU has.
    (e,) = entries
    assert e["measured"]["density"] < 1 and 0 < e["measured"]["rel_l2"] < 0.5
    assert "tma" not in e["launch"] and "-tma" not in done.stdout
    # The default's errors read the same in the sweep's lines and in `show`, each named for its data.
    for check in e["held_out"]:
        lines = [line for line in done.stdout.splitlines() if f"held out ({check['source']}): " in line]
        assert len(lines) == 2 and all(f"the default there {check['reference_rel_l2']:.4f}" in line for line in lines)
    assert done.stdout.count(f"the default on the calibration data: rel_l2 {e['reference']['rel_l2']:.4f}") == 2
