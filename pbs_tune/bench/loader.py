"""GPU benchmark of the runtime loader. Run on the device machine after `pbs-tune compile`.

Parts (--parts):
  (first calls from fresh processes and installs: pbs_tune/bench/library.py)
  density    the same model at 32k: Q/K/V of a few layers recorded through AttentionInterface,
             then the kept density, error and recall of each layer's profile entry on them.
  e2e        a Llama model with Llama-3.1-8B shapes and random weights (built from a config;
             nothing is downloaded): prefill time with SDPA cuDNN, SDPA flash and the tuned
             profile; logits at threshold 1.0 vs SDPA; generate() with the profile applied.
"""
import argparse
import json

import torch

from ..op.pbs_attention import pbs_attention
from ..measure.metrics import rel_l2
from ..measure.prefill import dense, dense_prefill_ms, prefill, prefill_ms
from ..runtime.loader import load_profile
from ..runtime.state import reset_stats, stats
from ..runtime.transformers_attention import apply



def part_e2e(res, lengths, layers, profile_path):
    from transformers import LlamaConfig, LlamaForCausalLM
    import dataclasses

    from ..profile import profiles

    cfg = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=128, rope_theta=500000.0,
                      max_position_embeddings=131072, attn_implementation="sdpa")
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).eval()
    torch.set_default_dtype(torch.float32)
    # transformers asks SDPA for enable_gqa, which cuDNN's backend may refuse: for the dense
    # baselines, let it repeat K/V instead (what it does whenever a mask is given).
    import transformers.integrations.sdpa_attention as hf_sdpa
    hf_sdpa.use_gqa_in_sdpa = lambda *a, **k: False
    prof = load_profile("auto", profile_path)
    rows = []

    for n in lengths:
        ids = torch.randint(0, cfg.vocab_size, (1, n), device="cuda")
        row = dict(n=n, layers=layers)
        row.update({f"sdpa_{k}": v for k, v in dense_prefill_ms(model, ids).items()})
        with dense(model, "flash"):
            ref_logits = prefill(model, ids).float()
        try:  # how far two dense bf16 backends differ: the tolerance PBS at threshold 1.0 is held to
            with dense(model, "cudnn"):
                cudnn_logits = prefill(model, ids).float()
            row["cudnn_vs_flash_logits_rel_diff"] = rel_l2(cudnn_logits, ref_logits)
        except RuntimeError as exc:
            row["cudnn_logits_error"] = str(exc)[:200]
        reset_stats()
        apply(model, prof)
        row["pbs_ms"] = prefill_ms(model, ids)
        row["pbs_stats"] = stats()
        # Threshold 1.0: PBS keeps every causal block, so logits must match SDPA's.
        dense_prof = profiles.Profile(path="<dense>", gpu=prof.gpu, entries=[
            dataclasses.replace(e, params=dataclasses.replace(e.params, threshold=1.0), dense_faster=False)
            for e in prof.entries])
        apply(model, dense_prof)
        dense_logits = prefill(model, ids).float()
        row["tau1_logits_rel_diff_vs_sdpa"] = rel_l2(dense_logits, ref_logits)
        row["tau1_top1_equal"] = bool((dense_logits.argmax(-1) == ref_logits.argmax(-1)).all())
        for key in ("sdpa_cudnn_ms", "sdpa_flash_ms"):
            if key in row:
                row["speedup_" + key[:-3]] = row[key] / row["pbs_ms"]
        rows.append(row)
        print(json.dumps(row), flush=True)
        model.set_attn_implementation("sdpa")
        del ids, ref_logits, dense_logits
        torch.cuda.empty_cache()
    apply(model, prof)
    reset_stats()
    ids = torch.randint(0, cfg.vocab_size, (1, lengths[0]), device="cuda")
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=4, do_sample=False)
    res["generate"] = dict(prompt=lengths[0], new_tokens=int(out.shape[1] - ids.shape[1]), stats=stats())
    print(json.dumps(res["generate"]), flush=True)
    res["e2e"] = rows


def part_density(res, n, profile_path, layers=(0, 15, 31)):
    from transformers import AttentionInterface, LlamaConfig, LlamaForCausalLM
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    from ..profile.target import detect_gpu
    from ..measure.metrics import dense_reference, rel_l2

    cfg = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=128, rope_theta=500000.0,
                      max_position_embeddings=131072)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).eval()
    torch.set_default_dtype(torch.float32)
    seen = {}

    def record(module, q, k, v, mask, **kw):
        if module.layer_idx in layers:
            seen[module.layer_idx] = (q.contiguous(), k.contiguous(), v.contiguous())
        return sdpa_attention_forward(module, q, k, v, mask, **kw)
    AttentionInterface.register("record", record)
    ALL_MASK_ATTENTION_FUNCTIONS.register("record", sdpa_mask)
    model.set_attn_implementation("record")
    with torch.no_grad():
        model(torch.randint(0, cfg.vocab_size, (1, n), device="cuda"), logits_to_keep=1)
    del model
    torch.cuda.empty_cache()
    entry = load_profile("auto", profile_path).pick(n, gpu=detect_gpu(), heads=32,
                                                             kv_heads=8, head_dim=128, dtype="bfloat16")
    p = entry.params
    rows = []
    for idx, (q, k, v) in sorted(seen.items()):
        out, blocks = pbs_attention(q, k, v, block_size=p.block_size, segment_size=p.segment_size,
                                             threshold=p.threshold, return_blocks=True)
        rows.append(dict(layer=idx, density=blocks.density(), rel_l2=rel_l2(out, dense_reference(q, k, v))))
        print(json.dumps(rows[-1]), flush=True)
    res["density"] = dict(n=n, params=p.as_dict(), layers=rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="e2e")
    ap.add_argument("--profile", default="configs/h100-sxm.yaml")
    ap.add_argument("--density-len", type=int, default=32768)
    ap.add_argument("--lengths", default="32768,65536,131072")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--out", default="bench_loader.json")
    args = ap.parse_args()
    from ..measure.timing import env_info, write_json
    res = dict(env=env_info(), args=vars(args))
    try:
        if "density" in args.parts:
            part_density(res, args.density_len, args.profile)
        if "e2e" in args.parts:
            part_e2e(res, [int(x) for x in args.lengths.split(",")], args.layers, args.profile)
    finally:
        write_json(args.out, res)


if __name__ == "__main__":
    main()
