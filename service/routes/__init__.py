"""One router per resource: inference (generate, next-token, attention, score), tokenize, meta."""
