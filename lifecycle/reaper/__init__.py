"""The reaper: sweeps find who is due, the evictor claims, writes durably, releases and finishes, reconcile repairs."""
