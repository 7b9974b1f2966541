"""virtio-net device: device-specific configuration (datapath comes with the ring engine)."""
