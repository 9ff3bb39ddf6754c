"""Deployment helpers: render and validate the Helm chart, build and smoke-test the images."""
