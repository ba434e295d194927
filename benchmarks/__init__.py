"""Benchmarks for lightning-per: scripts that print figures and save JSON plus a PNG plot."""
