"""The README's "Try it on a CPU" block runs as written, in a fresh folder."""
import os
import re
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_readme_cpu_try_out_runs_and_writes_a_profile(tmp_path):
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    block = re.search(r"<!-- cpu-try:start -->\s*```bash\n(.*?)```\s*<!-- cpu-try:end -->", text, re.S).group(1)
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    done = subprocess.run(["bash", "-e", "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    entries = yaml.safe_load((tmp_path / "try.yaml").read_text())["entries"]
    assert [e["seqlen"] for e in entries] == [256]
    assert "try.yaml: 1 entries" in done.stdout
    assert "pbs-tune: trial 0:" in done.stderr  # progress inside the sweep, on stderr
