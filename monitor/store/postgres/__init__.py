"""The state of a cluster in PostgreSQL (`MONITOR_STATE_URL`): the state roles, the alert
rows, the notification outbox and the evaluation's partition leases, one database
shared by every worker."""
