"""affect_core."""
