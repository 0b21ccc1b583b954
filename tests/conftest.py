"""Shared pytest configuration: the control plane fixtures for every test directory."""
pytest_plugins = ["netprobe_testbed.pytest_cluster", "netprobe_testbed.pytest_node"]
