"""Adapter folders on disk: graphpeft's manifest, PEFT's format both ways, atomic directory writes."""
