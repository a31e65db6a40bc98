"""The service's routes, one module per concern: :mod:`.ops` (probes, metrics, model) and :mod:`.segment`."""
