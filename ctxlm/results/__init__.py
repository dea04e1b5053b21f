"""Results: the seed's experiments and the scaling set as DVC experiments, their fits, and docs/RESULTS.md."""
