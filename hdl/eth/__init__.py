"""Ethernet MAC for the board: 1 Gb/s over RGMII (see docs/architecture.md,
"Ethernet MAC (board only)")."""
