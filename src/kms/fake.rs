//! An in-memory KMS for unit tests: real RSA key pairs, private keys "encrypted" under a fake
//! master key bound to the encryption context, and injectable failures.
