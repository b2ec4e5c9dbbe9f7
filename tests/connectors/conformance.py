from gateway.connectors.conformance import ConnectorConformance as ConnectorConformance  # shipped in the package now
