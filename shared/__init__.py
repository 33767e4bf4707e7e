"""JetBridge's importable core: every function and the CLI are thin adapters over it."""
