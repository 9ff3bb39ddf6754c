"""Monitoring of motif training: Grafana dashboards and Prometheus alerts as code, and a local Prometheus.

`python -m monitoring.generate` (`make dashboards`) writes the committed JSON and YAML from the
Python sources; `python -m monitoring.local` (`make monitor`) runs Prometheus against a local run.
"""
