"""Grafana dashboards, built with grafana-foundation-sdk. Each module's `build()` returns one dashboard."""
