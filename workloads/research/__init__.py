"""Research training on Ray Train and Ray Tune."""
