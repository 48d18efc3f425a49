"""affect_cli."""
