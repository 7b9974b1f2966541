"""PCIe physical layer, logical sub-block (PCIe Base 4.0 chapter 4), above PIPE."""
