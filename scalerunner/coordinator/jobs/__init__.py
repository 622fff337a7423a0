"""Jobs in the coordinator: the spec, the scheduler core, and the part that runs them (docs/jobs.md)."""
