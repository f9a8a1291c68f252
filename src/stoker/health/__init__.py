"""Node health: the probes, the check sets and test-only fault injection."""
