"""Preference pairs from judged conversations: rejected = what the model did, chosen = the fix."""
