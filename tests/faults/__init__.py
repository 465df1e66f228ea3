"""Reliability under faults: real processes, real signals, end-state checks."""
