"""What tests and scripts (benchmarks, accuracy) both use: the real service started on a free port, speech and
corpora to send it, job calls, word error counts. Tests and scripts import this package, never each other.
"""
