"""meter-state monitor: evaluate in-service meters from their own telemetry."""

__version__ = "0.1.0"
