"""Peers: other pruning methods run under our budget and plan format, for the benchmarks (not part of the library)."""
