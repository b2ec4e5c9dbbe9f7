"""Built-in connectors, registered through the same entry points as third-party ones."""
