"""What the tests share: float64 torch references and random inputs (they materialise N x N:
small sizes only), a tiny random Llama, profile entries and files, the CLI's tiny sweep and
capture, and a stand-in measurement for the tests of the study's bookkeeping."""
import math
import os
import sqlite3
import subprocess
import sys
import time

import torch
import transformers
from click.testing import CliRunner

from pbs_tune.cli import main
from pbs_tune.profile import profiles

TESTS = os.path.dirname(os.path.abspath(__file__))


def tiny_llama_config(vocab_size=97, **overrides):
    """A 2-layer Llama with 2 query heads, 1 KV head and head_dim 64 (GQA, fits the CPU interpreter)."""
    return transformers.LlamaConfig(**dict(dict(vocab_size=vocab_size, hidden_size=128, intermediate_size=256,
                                                num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                                head_dim=64, max_position_embeddings=512), **overrides))


def tiny_llama(**overrides):
    """A random tiny Llama in eval mode, on SDPA."""
    return transformers.LlamaForCausalLM(tiny_llama_config(attn_implementation="sdpa", **overrides)).eval()


# The shape of tiny_llama, and that of a Llama-3-8B-like model on a GPU profile.
TINY_SHAPE = dict(heads=2, kv_heads=1, head_dim=64, dtype="float32", block_size=16)
GPU_SHAPE = dict(heads=32, kv_heads=8, head_dim=128, dtype="bfloat16", block_size=128)


def profile_entry(seqlen, threshold=1.0, gpu="cpu", *, heads, kv_heads, head_dim, dtype, block_size, **extra):
    """A profile entry as its YAML mapping (segment = 2 blocks; launch tiles = the block, up to 128)."""
    tile = min(128, block_size)
    return dict(gpu=gpu, seqlen=seqlen, heads=heads, kv_heads=kv_heads, head_dim=head_dim, dtype=dtype,
                params=dict(block_size=block_size, segment_size=2 * block_size, threshold=threshold),
                launch=dict(block_m=tile, block_n=tile, num_warps=8 if tile == 128 else 4,
                            num_stages=3 if tile == 128 else 1), **extra)


def tiny_entry(seqlen, threshold=1.0, gpu="cpu", **extra):
    """A profile entry of tiny_llama's shape."""
    return profile_entry(seqlen, threshold, gpu, **TINY_SHAPE, **extra)


def write_profile(folder, entries, name="cpu.yaml") -> str:
    """A profile file of `entries` in `folder`; returns its path."""
    path = str(folder / name)
    profiles.merge_entries(path, entries)
    return path


def random_qkv(b, hq, hkv, n, d, dtype=torch.float32, n_keys=None):
    """Fresh random q (b, hq, n, d) and k, v (b, hkv, n_keys or n, d): the queries are the last n keys."""
    n_keys = n_keys or n
    return (torch.randn(b, hq, n, d, dtype=dtype), torch.randn(b, hkv, n_keys, d, dtype=dtype),
            torch.randn(b, hkv, n_keys, d, dtype=dtype))


def reference_for(q, perm, blocks):
    """Float64 attention over exactly the kept blocks of `blocks`, causal by original position."""
    allowed = allowed_matrix(blocks, perm.positions, q.shape[2], q.shape[1] // perm.k.shape[1])
    return masked_attention(q, perm.k, perm.v, allowed, 1 / math.sqrt(q.shape[-1]))


def allowed_matrix(blocks, positions, n, group):
    """(B, Hq, n, N) bool over permuted key slots: kept block and original position <= query.
    The n queries are the last n of the N = positions.shape[-1] key positions."""
    bs = blocks.block_size
    keys = positions.shape[-1]
    query_pos = torch.arange(keys - n, keys)
    kept = blocks.to_dense().cpu()                                  # (B, Hq, NQB, NKB)
    rows = kept[:, :, query_pos // bs - blocks.first_query_block]   # (B, Hq, n, NKB)
    tokens = rows.repeat_interleave(bs, dim=3)[..., :keys]
    pos = positions.repeat_interleave(group, dim=1).cpu()          # (B, Hq, N)
    causal = pos[:, :, None, :] <= query_pos[None, None, :, None]
    return tokens & causal


def masked_attention(q, k, v, allowed, scale):
    """Softmax attention in float64 restricted to `allowed`; K/V repeated for GQA."""
    group = q.shape[1] // k.shape[1]
    qd, kd, vd = (t.detach().cpu().double() for t in (q, k, v))
    kd = kd.repeat_interleave(group, dim=1)
    vd = vd.repeat_interleave(group, dim=1)
    s = (qd @ kd.transpose(-1, -2)) * scale
    s = s.masked_fill(~allowed, float("-inf"))
    return torch.softmax(s, dim=-1) @ vd


def causal_attention(q, k, v, scale):
    """Causal attention of the last q.shape[2] positions over all k.shape[2] keys."""
    n, keys = q.shape[2], k.shape[2]
    allowed = torch.ones(n, keys, dtype=torch.bool).tril(diagonal=keys - n)
    return masked_attention(q, k, v, allowed, scale)


def rel_l2(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm())


# ---- the CLI's sweeps and captures, at the interpreter's sizes

TINY_SWEEP = ["--heads", "2", "--kv-heads", "1", "--head-dim", "64", "--dtype", "float32", "--workload", "diffuse",
              "--max-error", "0.9"]


def sweep_args(tmp_path, *extra, seqlen="96", trials="3"):
    return ["sweep", "--gpu", "auto", "--seqlen", seqlen, "--trials", trials, *TINY_SWEEP,
            "--storage", f"sqlite:///{tmp_path}/study.db", "--profile", str(tmp_path / "cpu.yaml"), *extra]


def capture_tiny_llama(tmp_path, text, *extra):
    """Save a 2-layer random Llama and capture 128 tokens of `text` with it: (result, calib path)."""
    transformers.LlamaForCausalLM(tiny_llama_config(vocab_size=300)).save_pretrained(tmp_path / "model")
    (tmp_path / "book.txt").write_text(text)
    calib = tmp_path / "calib.safetensors"
    return CliRunner().invoke(main, ["capture", "--model", str(tmp_path / "model"),
                                     "--text", str(tmp_path / "book.txt"),
                                     "--seqlen", "128", "--out", str(calib), "--dtype", "float32", *extra]), calib


def finished_trials(tmp_path):
    """(number, state) of every trial in the study database of a tiny sweep."""
    con = sqlite3.connect(tmp_path / "study.db")
    try:
        return con.execute("select number, state from trials").fetchall()
    except sqlite3.OperationalError:  # the worker has not created the schema yet
        return []
    finally:
        con.close()


# ---- the study's bookkeeping without kernels

def stand_in_measure(cal, cfg, *, target, timed=True, seconds=0.4):
    """What SweepSpec.stand_in names in the tests of resume, retry, heartbeats and shared workers: a
    measurement that runs no kernel, a fixed function of the config (the threshold buys accuracy with
    time), taking long enough (0.4 s) for a sweep to be killed in the middle of a trial."""
    time.sleep(seconds)
    p = cfg.params
    return dict(latency_ms=(1.0 + p.threshold) * 64 / p.block_size if timed else None,
                rel_l2=0.5 * (1.0 - p.threshold), recall=p.threshold, density=p.threshold)


def held_stand_in_measure(cal, cfg, *, target, timed=True):
    """`stand_in_measure`, except that a worker whose pid the test has named (a file `hold-<pid>` in
    $PBS_TUNE_TEST_HOLD) stops inside its next trial, says so (`in-trial-<pid>`) and waits there to be
    killed: the signal lands in the middle of a trial on any machine, however loaded."""
    hold = os.environ.get("PBS_TUNE_TEST_HOLD")
    if timed and hold and os.path.exists(os.path.join(hold, f"hold-{os.getpid()}")):
        open(os.path.join(hold, f"in-trial-{os.getpid()}"), "w").close()
        time.sleep(600)
    return stand_in_measure(cal, cfg, target=target, timed=timed)


def stand_in_spec(tmp_path, **fields):
    """A tiny sweep's spec whose trials run `stand_in_measure`, with heartbeats every second (a dead
    sweep's trial is failed and retried after 3 s, not 30)."""
    from pbs_tune.tune.spec import SweepSpec
    return SweepSpec(**dict(dict(gpu="cpu", seqlens=(64,), storage=f"sqlite:///{tmp_path}/study.db",
                                 profile=str(tmp_path / "cpu.yaml"), heads=2, kv_heads=1, head_dim=64,
                                 dtype="float32", workload="diffuse", max_error=0.9, trials=8,
                                 heartbeat_s=1, stand_in="helpers:stand_in_measure"), **fields))


def sweep_process(spec, **env_vars) -> subprocess.Popen:
    """`run_sweep(spec)` in a process of its own (its workers find `helpers` through PYTHONPATH, and
    env_vars), stdout and stderr together."""
    code = ("import sys; from pbs_tune.tune.spec import SweepSpec; from pbs_tune.tune.sweep import run_sweep; "
            "run_sweep(SweepSpec.from_json(sys.argv[1]))")
    env = dict(os.environ, TRITON_INTERPRET="1", **env_vars,
               PYTHONPATH=os.pathsep.join(filter(None, [TESTS, os.environ.get("PYTHONPATH")])))
    return subprocess.Popen([sys.executable, "-c", code, spec.to_json()], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
