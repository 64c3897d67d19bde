"""The shared vocabulary: time, the measurement schema, decisions, the rules file, the registry and the protocols (seams). Imports nothing else of the package."""
