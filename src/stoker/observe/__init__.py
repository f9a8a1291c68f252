"""Telemetry records, FLOP/MFU accounting, profiler capture and trace analysis."""
