"""Wire layer: the AOG ProviderService proto, go-plugin protos, the trio⇄grpc bridge."""
