//! Helpers shared by the integration tests (fixture paths).
