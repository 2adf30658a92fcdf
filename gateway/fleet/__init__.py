"""The fleet: gateway members sharing one store. `membership`: who is a member, the identity
they share, and what happens when one is lost; `bus`: short messages between members over the
store."""
