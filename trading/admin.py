"""The trading app keeps no models of its own: broker state lives at the broker, and the
orders app records what Bronco knows of it."""
