"""What the service runs on: settings, metrics, the MQTT client and embedded broker, hot reload."""
