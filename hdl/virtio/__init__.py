"""virtio PCI transport: common cfg, notify, ISR, device cfg."""
