"""The hardware-in-the-loop bench for FPGA bitstreams (planned; see docs/architecture.md)."""
