"""Sequence lengths as people write them: 131072, 128k, 1M."""


def parse_length(text) -> int:
    """'128k' -> 131072, '1M' -> 1048576, '4096' -> 4096. Raises ValueError otherwise."""
    s = str(text).strip().lower()
    mult = {"k": 1024, "m": 1024 * 1024}.get(s[-1:], 1)
    digits = s[:-1] if mult > 1 else s
    if not digits.isdigit() or int(digits) <= 0:
        raise ValueError(f"bad sequence length {text!r}: use e.g. 8192, 32k or 1M")
    return int(digits) * mult


def format_length(n: int) -> str:
    if n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)}M"
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)
