//! In-memory [`StateStore`](super::StateStore) for tests and the local run.
