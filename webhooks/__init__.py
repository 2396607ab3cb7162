"""One router per inbound source: authenticate, parse, dedupe, enqueue, answer fast."""
