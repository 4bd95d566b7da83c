"""User state: the Redis key layout, the byte encoding, the pure update rule, the Redis adapter."""
