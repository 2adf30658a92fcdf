"""Client protocols on the gateway side. Each file has a twin of the same name under
agent/protocols/, so a reader finds the other half at once."""
