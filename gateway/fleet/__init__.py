"""What gateway members say to each other: `bus` carries short messages over the store."""
