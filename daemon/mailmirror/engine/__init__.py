"""The sync engine: planning, copying, verifying one pair at a time."""
