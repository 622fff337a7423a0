"""The coordinator's MQTT broker: a mosquitto it starts and supervises, or an external one.

- ``config``: mosquitto.conf and the ACL rendered from a small input (pure).
- ``credentials``: per-node and coordinator passwords, and mosquitto's hashed password file.
- ``supervisor``: ``ManagedBroker`` (start/stop/reload of a child mosquitto) and
  ``ExternalBroker``.

See docs/broker.md for the generated files, the ACL and TLS.
"""

from .config import (
    COORDINATOR_USER,
    BrokerAccess,
    BrokerFiles,
    MosquittoConfig,
    TlsFiles,
    render_acl,
    render_conf,
)
from .credentials import ensure_credentials, load_credentials, node_password, write_password_file
from .supervisor import CREDENTIALS_FILE, Broker, ExternalBroker, ManagedBroker, restart_delay

__all__ = [
    "COORDINATOR_USER",
    "CREDENTIALS_FILE",
    "Broker",
    "BrokerAccess",
    "BrokerFiles",
    "ExternalBroker",
    "ManagedBroker",
    "MosquittoConfig",
    "TlsFiles",
    "ensure_credentials",
    "load_credentials",
    "node_password",
    "render_acl",
    "render_conf",
    "restart_delay",
    "write_password_file",
]
