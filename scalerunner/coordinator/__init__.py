"""The coordinator service (planned; see docs/architecture.md)."""
