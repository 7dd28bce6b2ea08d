"""`make bench`: throughput and latency of the pipeline against simpler loops, in one run."""
