"""Taxi fare meters: tariffs and the fare formula (CONTRACT §9, DOMAIN §2)."""
