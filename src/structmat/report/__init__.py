"""The report: HTML pages with embedded plots, and JSON results, rendered from experiment data."""
