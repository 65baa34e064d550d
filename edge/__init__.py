"""The tunnelgate edge: public listeners, access control, and the tunnel endpoint."""
