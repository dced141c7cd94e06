"""Benchmarks behind `padt bench ...`; each returns a JSON-serialisable dict."""
