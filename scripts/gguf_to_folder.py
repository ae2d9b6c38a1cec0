"""Kept: bench_gpu.sh's models step runs it on a QWEN_MODEL folder holding only the GGUF.

A GGUF model as a plain bf16 transformers folder, so that each tool loads it in seconds rather than
dequantizing it again (transformers cannot save_pretrained a model loaded from GGUF).
    python scripts/gguf_to_folder.py FOLDER_WITH_GGUF GGUF_FILE OUT_FOLDER"""
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
src, name, dst = sys.argv[1:4]
kw = dict(gguf_file=name)
gguf = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16, **kw)
cfg = gguf.config
if hasattr(cfg, "quantization_config"):
    del cfg.quantization_config  # the weights below are plain bf16, dequantized from the GGUF
plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
missing, unexpected = plain.load_state_dict(gguf.state_dict(), strict=False)
assert not unexpected and all("lm_head" in m for m in missing), (missing, unexpected)
plain.tie_weights()
assert torch.equal(plain.get_output_embeddings().weight, gguf.get_output_embeddings().weight)
plain.save_pretrained(dst)
AutoTokenizer.from_pretrained(src, **kw).save_pretrained(dst)
print("converted", src, "->", dst)
