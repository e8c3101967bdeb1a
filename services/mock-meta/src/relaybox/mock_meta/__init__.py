"""relaybox package."""
