"""The scheduling policy: pure functions over a snapshot. No I/O, no clock, no threads."""
