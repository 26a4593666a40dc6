"""Data attribution: per-example gradients, query compression, influence scores (paper sections 2.2, 3.2)."""
