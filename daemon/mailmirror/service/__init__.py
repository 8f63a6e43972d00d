"""The long-running service: scheduling, limits, metrics, health, notifications, fleet status."""
