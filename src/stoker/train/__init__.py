"""The training runtime that runs inside each rank. Knows nothing of the control plane."""
