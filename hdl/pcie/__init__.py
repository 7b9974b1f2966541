"""PCI Express transaction layer: TLP streams, config space, BAR completer."""
