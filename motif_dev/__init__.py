"""Repository tooling for motif, not shipped in its wheel: the chart's rendering and validation, the
images' build and smoke test. It reads files only a checkout has (charts/, images/, tests/schemas)."""
