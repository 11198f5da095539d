"""tokenize stage: preference pairs → Moshi token streams with per-side reply windows, packed into
a sharded, versioned pair dataset (components/streams/pairset.py)."""
