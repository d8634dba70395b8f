"""Whisper's decoding on the GPU: the plan and its rules, slots with their KV caches, graphs, memory sizing, and
cross-attention at memory bandwidth (cross_attention, split_kv).

The CPU keeps openai-whisper's own decode; everything here must choose whisper's tokens, bit for bit (with
WHISPER_CROSS_ATTENTION=sdpa; cuDNN and the split-KV kernel round differently).
"""
