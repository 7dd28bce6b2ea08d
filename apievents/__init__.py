"""The apievents command line: the composition root that wires the services together."""
