"""The coordinator service, composed in ``app``: inventory, store, managed broker, MQTT link,
node lifecycle and health, REST API and metrics (docs/architecture.md)."""
