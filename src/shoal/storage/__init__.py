"""On-disk formats."""
