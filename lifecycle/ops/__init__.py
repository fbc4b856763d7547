"""Operator tools: the lifecycle command, the demo, the benchmarks, the metrics exporter, startup checks."""
