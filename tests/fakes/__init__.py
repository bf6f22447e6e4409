"""In-memory fakes of Bronco's own protocols, for the fast test layer (PostgreSQL and Redis
only). They stand in for Bronco's adapters, never for a third-party SDK."""
