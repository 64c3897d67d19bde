"""Telemetry in: MQTT topics and payloads parsed and validated, then handed to the store."""
