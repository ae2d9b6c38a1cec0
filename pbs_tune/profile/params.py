"""The PBS-Attn parameters of one entry, layer or call, checked once where they are made.

A `PbsParams` that exists is valid: the op, the profiles and the tuner all build one, so a bad
block size or threshold is said in the same words wherever it comes from. Only the number of
per-head thresholds depends on the call (`per_head`).
"""
from dataclasses import asdict, dataclass

from .launch import is_pow2

# Block estimators that score key blocks for selection (op/selection.py). mean: mean query .
# mean key (the paper's). lse: the block's mean query against every key of the block
# (logsumexp, kernels/block_scores.py), its threshold taken of the mass outside the sink block.
ESTIMATORS = ("mean", "lse")

# Retrieval safety, on unless an entry says otherwise (op/columns.py, kernels/block_select.py): the
# last query blocks keep every causal key block (the question's rows, whose logits a prefill returns)
# and every query block keeps the key blocks holding the last block's heaviest keys. Values: the
# most that cost <= 5% of the op on the held-out families at 32k (H100: 1 and 4 cost 4.9%, 0.9% at
# 128k; 1 and 8 7.7%), each alone making the question's rows exact there (benchmarks/README.md,
# "Retrieval-safe PBS").
DEFAULT_TAIL_BLOCKS = 1
DEFAULT_COLUMN_BLOCKS = 4


def _checked_threshold(threshold):
    """A float, or a tuple of floats (one per query head), from a number, a sequence or a tensor."""
    given = threshold
    if hasattr(threshold, "tolist"):  # a tensor
        threshold = threshold.tolist()
    values = tuple(threshold) if isinstance(threshold, (list, tuple)) else (threshold,)
    if not values or any(isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 < t <= 1.0
                         for t in values):
        raise ValueError(f"threshold must be a number in (0, 1], or one per query head, got {given!r}")
    return tuple(map(float, values)) if isinstance(threshold, (list, tuple)) else float(values[0])


@dataclass(frozen=True)
class PbsParams:
    """The PBS-Attn parameters of one call, layer or profile entry; ValueError when made with a bad value.

    Args:
        block_size: tokens per block, of queries and keys alike: a power of two >= 16.
        segment_size: tokens per permuted segment (keys never leave theirs), a multiple of block_size.
        threshold: the cumulative softmax mass each query block keeps, in (0, 1]: one number, or one per query
            head (a sequence or tensor, kept as a tuple); 1.0 keeps every causal block.
        permute: False selects blocks of the keys in original order (the unpermuted baseline).
        estimator: how key blocks are scored, one of ESTIMATORS: "mean" (the paper's mean query . mean key)
            or "lse" (each block's mean query against all its keys; the threshold is of the mass outside the sink).
        tail_blocks: the last so many query blocks attend to every causal key block; 0 turns it off.
        column_blocks: key blocks per KV head, those holding the last query block's heaviest keys, that every
            query block keeps; 0 turns it off.
    """

    block_size: int
    segment_size: int
    threshold: float | tuple[float, ...]
    permute: bool = True
    estimator: str = "mean"
    tail_blocks: int = DEFAULT_TAIL_BLOCKS
    column_blocks: int = DEFAULT_COLUMN_BLOCKS

    def __post_init__(self):
        bs, seg = self.block_size, self.segment_size
        if not is_pow2(bs) or bs < 16:
            raise ValueError(f"block_size must be a power of two >= 16, got {bs!r}")
        if not isinstance(seg, int) or isinstance(seg, bool) or seg < bs or seg % bs:
            raise ValueError(f"segment_size {seg!r} is not a multiple of block_size {bs} (at least one block)")
        object.__setattr__(self, "threshold", _checked_threshold(self.threshold))
        if not isinstance(self.permute, bool):
            raise ValueError(f"permute must be true or false, got {self.permute!r}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {self.estimator!r}")
        for name in ("tail_blocks", "column_blocks"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a whole number of blocks, 0 or more (0 turns it off), got {value!r}")

    def per_head(self, heads: int) -> tuple:
        """One threshold per query head; ValueError when a list does not match `heads`."""
        if not isinstance(self.threshold, tuple):
            return (self.threshold,) * heads
        if len(self.threshold) == 1:
            return self.threshold * heads
        if len(self.threshold) != heads:
            raise ValueError(f"threshold has {len(self.threshold)} values for {heads} query heads: give one number "
                             f"in (0, 1], or one per query head ({heads})")
        return self.threshold

    @property
    def keeps_all(self) -> bool:
        return min(self.threshold if isinstance(self.threshold, tuple) else (self.threshold,)) >= 1.0

    def as_dict(self) -> dict:
        d = asdict(self)
        if isinstance(self.threshold, tuple):
            d["threshold"] = list(self.threshold)
        # Defaults stay implicit: files of earlier releases read the same.
        for name in ("permute", "estimator", "tail_blocks", "column_blocks"):
            if d[name] == PbsParams.__dataclass_fields__[name].default:
                del d[name]
        return d


def describe_threshold(threshold) -> str:
    if isinstance(threshold, tuple) and min(threshold) != max(threshold):
        return f"τ{min(threshold):.3g}-{max(threshold):.3g}/head"
    if isinstance(threshold, tuple):
        threshold = threshold[0]
    return f"τ{threshold:.3g}"


def describe_knobs(params: PbsParams) -> str:
    """' tail2 col16' where the retrieval knobs differ from their defaults ('' otherwise)."""
    return (f"{'' if params.tail_blocks == DEFAULT_TAIL_BLOCKS else f' tail{params.tail_blocks}'}"
            f"{'' if params.column_blocks == DEFAULT_COLUMN_BLOCKS else f' col{params.column_blocks}'}")


def describe_config(params: PbsParams, launch) -> str:
    """'b128 s256 τ0.9 128x128w8s3' (with 'unpermuted', the estimator and the retrieval knobs where
    not the default)."""
    return (f"b{params.block_size} s{params.segment_size} {describe_threshold(params.threshold)}"
            f"{'' if params.permute else ' unpermuted'}{'' if params.estimator == 'mean' else ' ' + params.estimator}"
            f"{describe_knobs(params)} "
            f"{launch.label()}")
