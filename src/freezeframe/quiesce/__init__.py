"""Application quiescers: bring an application to a consistent point, hold it there across the
snapshots, release it. Knows nothing of volumes, snapshots or the repository."""
