"""PCIe data link layer (PCIe Base 4.0 chapter 3)."""
