"""The coordinator's MQTT broker: a mosquitto it starts and supervises, or an external one.

- ``config``: mosquitto.conf, the dynamic-security plugin's users and roles, and the
  equivalent ACL file for an external mosquitto, rendered from a small input (pure).
- ``credentials``: per-node and coordinator passwords, and their hashes for the plugin.
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
    render_dynsec,
)
from .credentials import dynsec_hash, ensure_credentials, load_credentials, node_password
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
    "dynsec_hash",
    "ensure_credentials",
    "load_credentials",
    "node_password",
    "render_acl",
    "render_conf",
    "render_dynsec",
    "restart_delay",
]
