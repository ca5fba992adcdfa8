"""The data plane and its HTTP surface."""
