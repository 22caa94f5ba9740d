"""Helpers shared by several test packages (token minting, loopback servers)."""
