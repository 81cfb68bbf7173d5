"""Applications that run on the medray platform."""
