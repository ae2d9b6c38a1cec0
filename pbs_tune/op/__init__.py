"""The PBS-Attn op and its three stages: permute keys, select blocks, attend over kept blocks."""
