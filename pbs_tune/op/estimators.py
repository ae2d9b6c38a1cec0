"""Names of the block estimators that score key blocks for selection, kept free of torch so that
profiles and the CLI can check a name without loading the op.

mean: mean query . mean key (the paper's). lse: the block's mean query against every key of the
block (logsumexp, kernels/block_scores.py), its threshold taken of the mass outside the sink block.
"""
ESTIMATORS = ("mean", "lse")
