"""Agents: the vendor-neutral interface and its implementations."""
