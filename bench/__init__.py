"""Benchmarks: each runs its baseline and the ctxlm path in one process and prints ratios; the last
line of output is one JSON object. They measure; tests check correctness."""
