"""The streaming worker, the CLI and the jobs around them (demo, replay)."""
