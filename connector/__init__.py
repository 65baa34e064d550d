"""The tunnelgate connector: keeps outbound tunnel connections to the edge and serves each
stream the edge opens against a local origin service, per its ingress rules."""
