"""Train the long-context fixture (models/byte_llama.py) on one GPU: `python -m pbs_tune.models.train_fixture`.

Data: bytes of the installed Python packages' sources in the *train* split (models/fixtures.py;
calibration and evaluation packages are never read here), plus a share of needle sequences.
Length curriculum: each phase is `length:steps` at a fixed number of bytes per step, so a run
is the same for a given seed and device; learning rate: warm-up, then cosine to 10% over all
steps. Writes the model folder: bf16 safetensors, config, `fixture.json` (tokenizer and
training facts), `training_log.jsonl`, `data_manifest.json`.
"""
import argparse
import hashlib
import json
import math
import os
import time

import numpy as np
import torch

from .byte_llama import MARKER, model_config, needle_sequence, text_bytes
from .fixtures import ROLES, package_folders, python_sources


def _package_names(role):
    return sorted({os.path.basename(folder) for folder in package_folders(role)})


def parse_phases(text):
    """'2048:1200,8192:700' -> [(2048, 1200), (8192, 700)]."""
    try:
        phases = [tuple(int(x) for x in part.split(":")) for part in text.split(",")]
        if not phases or any(len(p) != 2 or p[0] < 64 or p[1] < 1 for p in phases):
            raise ValueError
    except ValueError:
        raise ValueError(f"--phases {text!r}: write length:steps pairs, e.g. 2048:1200,32768:400") from None
    return phases


def batch(rng, text, seqlen, rows, needle_share):
    out = np.empty((rows, seqlen), dtype=np.int64)
    for r in range(rows):
        if rng.random() < needle_share:
            seq, _ = needle_sequence(rng, text, seqlen)
            out[r] = np.frombuffer(seq, dtype=np.uint8)
        else:
            start = int(rng.integers(0, len(text) - seqlen))
            out[r] = text[start:start + seqlen]
    return torch.from_numpy(out)


def needle_probe(model, rng, text, seqlen, count=16):
    """Share of needle answers (all 5 digits) the model predicts, teacher-forced (= greedy)."""
    hits = 0
    for _ in range(count):
        seq, answer = needle_sequence(rng, text, seqlen - 6, asked_depth=float(rng.random()))
        device = next(model.parameters()).device
        ids = torch.tensor(list(seq + f" {answer}".encode()), device=device)[None]
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
            pred = model(ids[:, :-1]).logits[0, -5:].argmax(-1)
        hits += bool((pred == ids[0, -5:]).all())
    return hits / count


def train(out_dir, phases, *, tokens_per_step=65536, lr=2e-3, warmup=200, needle_share=0.25, seed=0,
          text_limit=400 << 20, layers=8, hidden=512, intermediate=1024, heads=8, kv_heads=2, head_dim=128,
          device="cuda", probe_count=16, budget_seconds=None):
    from transformers import LlamaForCausalLM
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train_files = python_sources("train")
    text = text_bytes(train_files, text_limit)
    probe_text = text_bytes(python_sources("calibration"), min(text_limit, 64 << 20))
    cfg = model_config(layers, hidden, intermediate, heads, kv_heads, head_dim)
    cfg._attn_implementation = "sdpa"
    model = LlamaForCausalLM(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=device == "cuda")
    total = sum(s for _, s in phases)
    os.makedirs(out_dir, exist_ok=True)
    log = open(os.path.join(out_dir, "training_log.jsonl"), "w", encoding="utf-8")
    step, start = 0, time.perf_counter()
    for seqlen, steps in phases:
        if budget_seconds and time.perf_counter() - start > budget_seconds:
            break
        rows = max(1, tokens_per_step // seqlen)
        for _ in range(steps):
            if budget_seconds and time.perf_counter() - start > budget_seconds:
                break
            scale = min(1.0, (step + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * step / total)))
            for group in opt.param_groups:
                group["lr"] = lr * scale
            ids = batch(rng, text, seqlen, rows, needle_share).to(device, non_blocking=True)
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
                loss = model(ids, labels=ids).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if step % 50 == 0 or step == total:
                value = loss.item()
                row = dict(step=step, seqlen=seqlen, loss=value, bits_per_byte=value / math.log(2),
                           lr=lr * scale, seconds=round(time.perf_counter() - start, 1))
                log.write(json.dumps(row) + "\n")
                log.flush()
                print(json.dumps(row), flush=True)
        model.eval()
        probe = dict(phase_end=seqlen, step=step,
                     needle_probe=needle_probe(model, rng, probe_text, seqlen, probe_count),
                     seconds=round(time.perf_counter() - start, 1))
        model.train()
        log.write(json.dumps(probe) + "\n")
        print(json.dumps(probe), flush=True)
    seconds = time.perf_counter() - start
    if step < total:
        log.write(json.dumps(dict(stopped_early=True, step=step, of=total, budget_seconds=budget_seconds)) + "\n")
    log.close()
    model.to(torch.bfloat16).save_pretrained(out_dir)
    digest = hashlib.sha256(text.tobytes()).hexdigest()
    facts = dict(tokenizer="utf-8 bytes (vocabulary 256)", trained_lengths=[p[0] for p in phases],
                 phases=[dict(length=n, steps=s, rows=max(1, tokens_per_step // n)) for n, s in phases],
                 tokens_per_step=tokens_per_step, lr=lr, warmup=warmup, needle_share=needle_share, seed=seed,
                 steps_done=step, training_seconds=round(seconds, 1),
                 parameters=sum(p.numel() for p in model.parameters()),
                 device=torch.cuda.get_device_name() if device == "cuda" else device, torch=torch.__version__,
                 needle="'# <6 letters> = <5 digits>' lines; 4 per sequence; all asked at the end")
    with open(os.path.join(out_dir, MARKER), "w", encoding="utf-8") as f:
        json.dump(facts, f, indent=1)
    with open(os.path.join(out_dir, "data_manifest.json"), "w", encoding="utf-8") as f:
        json.dump(dict(split_rule=f"sha256(package name) % 10 in {ROLES} (models/fixtures.py)",
                       train=dict(files=len(train_files), bytes_used=int(len(text)), sha256=digest,
                                  packages=_package_names("train")),
                       **{role: dict(packages=_package_names(role))
                          for role in ROLES if role != "train"}), f, indent=1)
    return facts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="model folder to write")
    ap.add_argument("--phases", default="2048:1200,8192:700,32768:400", help="length:steps, in order")
    ap.add_argument("--tokens-per-step", type=int, default=65536)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--needle-share", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget-minutes", type=float, default=11.0, help="stop training (and save) after this long")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("train_fixture: needs a CUDA GPU (training on the CPU would take days)")
    try:
        phases = parse_phases(args.phases)
    except ValueError as exc:
        raise SystemExit(f"train_fixture: {exc}") from None
    print(json.dumps(train(args.out, phases, tokens_per_step=args.tokens_per_step, lr=args.lr,
                           needle_share=args.needle_share, seed=args.seed, budget_seconds=60 * args.budget_minutes)))


if __name__ == "__main__":
    main()
