"""Optional glue for client frameworks (each module imports its framework lazily or guards the import)."""
