"""The GPU decoder's parts: cross-attention at memory bandwidth (cross_attention, split_kv)."""
