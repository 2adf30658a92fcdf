"""Recording formats both sides can read (sans-I/O)."""
