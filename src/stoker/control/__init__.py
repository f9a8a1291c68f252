"""The control plane: store, reconciler, executors and health checks."""
