"""Chain settings (node URLs, contract addresses, confirmations). Owned by the chain app."""
