"""Device mesh and the logical-axis -> mesh-axis rules."""
