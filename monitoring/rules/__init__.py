"""Prometheus alerting rules (`alerts.py`) and their promtool unit tests."""
