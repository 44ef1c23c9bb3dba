"""Integrations with training engines (transformers' Trainer)."""
