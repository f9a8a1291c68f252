"""Stoker: a PyTorch-native training platform (training runtime + control plane)."""

__version__ = "0.1.0"
