"""One router per resource, each with its prefix and tags."""
