"""Opcode counts of the attend kernels' SASS in a Triton cache folder (scripts/precision_gpu.sh, STEP=why):
what each arithmetic mode adds per key tile, read statically (no hardware counters needed).

    python scripts/sass_mix.py CACHE_DIR   # one JSON line per cubin: {kernel: {opcode: count}}
"""
import collections
import json
import pathlib
import re
import shutil
import subprocess
import sys

import triton

WATCH = ("I2F", "F2F", "F2FP", "MUFU", "HGMMA", "IGMMA", "QGMMA", "HMMA", "IMMA", "FFMA", "FMUL", "FADD", "FMNMX",
         "IMAD", "IADD3", "LDS", "LDSM", "STS", "LDG", "STG", "UTMALDG", "SYNCS", "BAR", "SHFL", "PRMT", "LOP3")


def cuobjdump():
    found = shutil.which("cuobjdump")
    if found:
        return found
    return str(pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")


def opcodes(cubin):
    sass = subprocess.run([cuobjdump(), "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
    counts = collections.Counter()
    for line in sass.splitlines():
        m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", line)
        if m:
            counts[m.group(1)] += 1
    return counts


for cubin in sorted(pathlib.Path(sys.argv[1]).rglob("*.cubin")):
    counts = opcodes(cubin)
    mix = {op: counts[op] for op in WATCH if counts[op]}
    print(json.dumps(dict(kernel=cubin.stem, total=sum(counts.values()), mix=mix)), flush=True)
