"""Network boot: the image registry, the node-facing boot HTTP server, DHCP/TFTP via dnsmasq,
the Raspberry Pi 4 boot tree and the one-time boot tokens (docs/netboot.md).

``base`` holds the small interfaces the parts meet at; each part is its own module.
"""
