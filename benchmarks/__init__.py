"""Benchmarks: smtppool against its peers on the same sink, in the same run."""
