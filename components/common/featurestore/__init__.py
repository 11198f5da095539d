"""The Feast feature store, shared: the repository's objects (definitions.py) and the client that
applies, materialises, reads and erases them (store.py).

A library like the consent registry, not a stage: the features stage writes rows through it, the
mix builder reads point-in-time features through it, and erasure removes a user's rows through
it — none of them imports another's internals."""
