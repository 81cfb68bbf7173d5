"""Real-time diagnosis on Ray Serve."""
