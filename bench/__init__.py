"""Benchmarks that print ratios measured side by side (not tests); see bench/transfer.py."""
