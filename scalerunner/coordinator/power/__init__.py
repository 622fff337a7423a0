"""Node power: one interface (base.py), back ends per device, the coordinator's power part."""
