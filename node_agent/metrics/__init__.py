"""Kernel maps to Prometheus metrics: key decoding, labels, histograms, the Collector."""
