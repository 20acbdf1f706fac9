"""Running cells: executors (one process per cell), the runner that stores records, the results store."""
