//! Test fixtures. The reconcile scenarios (tests/controller_reconcile.rs) carry their own
//! API-server verifier and use the engine's `kms::fake::FakeKms`, since integration tests
//! cannot see `#[cfg(test)]` items of the library.
