"""Alerts: conditions from decisions, the alert book (lifecycle), routing and delivery, offline meters."""
