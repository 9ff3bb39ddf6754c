"""Training metrics: names (declared once, in `names`), the Prometheus exporter and the JSONL log."""
