"""Whisper's decoding on the GPU: the plan and its rules, slots with their KV caches, graphs, memory sizing.

The CPU keeps openai-whisper's own decode; everything here must choose whisper's tokens, bit for bit.
"""
