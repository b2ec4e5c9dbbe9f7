"""Fake legacy apps that run as real aiohttp servers on loopback."""
