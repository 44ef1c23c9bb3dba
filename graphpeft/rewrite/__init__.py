"""Rewrite: sites of a graph, matching rules against them, and materializing the claimed adapters
(plus graph passes)."""
