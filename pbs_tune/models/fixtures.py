"""Real attention to calibrate and judge on: models that install offline, and texts on disk.

* a packaged model by name (models/packaged.py): `smollm2` (SmolLM2-135M, 8k context) or
  `qwen2.5-coder-0.5b` (Qwen2.5-Coder-0.5B-Instruct, 32k context), GGUF files inside packages of
  the package index; transformers loads them with `gguf_file=`.
* a folder with `fixture.json`: the byte-level long-context Llama trained here (models/byte_llama.py).
* `python_sources(role)`: source files of the installed Python packages, split by package into
  train / calibration / evaluation by a hash of the package name, so the split is the same on
  every run and no text is both calibrated on and evaluated on.
"""
import hashlib
import os
import site
import sysconfig

from .byte_llama import ByteTokenizer, is_fixture
from .packaged import PACKAGED

ROLES = {"train": range(0, 6), "calibration": range(6, 8), "evaluation": range(8, 10)}


def smollm2_files():
    """(folder, gguf file name) of the packaged SmolLM2, or ValueError saying how to install it."""
    return PACKAGED["smollm2"].folder_and_file()


def load_model(model, *, gguf_file=None, dtype="bfloat16", device=None):
    """(model, tokenizer or None) from a local folder (optionally a GGUF file in it) or a packaged
    model's name ('smollm2', 'qwen2.5-coder-0.5b')."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if model in PACKAGED:
        model, gguf_file = PACKAGED[model].folder_and_file()
    if not os.path.isdir(model):
        raise ValueError(f"--model {model} is not a local model folder or one of {', '.join(PACKAGED)} "
                         f"(nothing is downloaded)")
    if gguf_file and not os.path.isfile(os.path.join(model, gguf_file)):
        raise ValueError(f"--gguf-file {gguf_file} is not in {model}")
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    net = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype), **extra).to(device).eval()
    if is_fixture(model):
        return net, ByteTokenizer()
    try:
        tokenizer = AutoTokenizer.from_pretrained(model, **extra)
    except (OSError, ValueError, TypeError):
        tokenizer = None
    return net, tokenizer


def attention_shape(model) -> dict:
    """heads, kv_heads, head_dim and dtype of a model's attention: what picks its profile entries."""
    from ..dtypes import name_of
    cfg = model.config
    return dict(heads=cfg.num_attention_heads, kv_heads=cfg.num_key_value_heads, head_dim=head_dim_of(cfg),
                dtype=name_of(next(model.parameters()).dtype))


def head_dim_of(config) -> int:
    """Size of one attention head: the config's `head_dim` where it has one, else hidden size over
    heads (transformers' Qwen2 config has no `head_dim` in some releases, 5.17 among them)."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _role_of(package: str) -> str:
    bucket = int(hashlib.sha256(package.encode()).hexdigest(), 16) % 10
    return next(role for role, buckets in ROLES.items() if bucket in buckets)


def package_folders(role: str, roots=None) -> list:
    """Sorted folders of the installed packages whose name hashes to `role`."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    roots = roots or sorted({sysconfig.get_paths()["purelib"], *site.getsitepackages()})
    return [os.path.join(root, package) for root in roots if os.path.isdir(root)
            for package in sorted(os.listdir(root))
            if package.isidentifier() and _role_of(package) == role and os.path.isdir(os.path.join(root, package))]


def python_sources(role: str, roots=None) -> list:
    """Sorted .py files of the installed packages whose name hashes to `role`."""
    files = []
    for folder in package_folders(role, roots):
        for dirpath, dirnames, names in os.walk(folder):
            dirnames.sort()
            files += [os.path.join(dirpath, n) for n in sorted(names) if n.endswith(".py")]
    return files


def token_sequences(tokenizer, files, seqlen: int, count: int):
    """`count` sequences of `seqlen` token ids cut from the concatenated files (file order)."""
    import torch
    out, buffer = [], []
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError):
            continue
        buffer += tokenizer(f"# file: {os.path.basename(path)}\n{text}\n")["input_ids"]
        while len(buffer) >= seqlen and len(out) < count:
            out.append(torch.tensor(buffer[:seqlen]))
            buffer = buffer[seqlen:]
        if len(out) == count:
            return out
    raise ValueError(f"the texts give only {len(out)} sequences of {seqlen} tokens, {count} asked")
