"""Supernet training (single-path one-shot) and weight inheritance."""
