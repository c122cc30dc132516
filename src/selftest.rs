//! The self-test (the Test button): generate a key pair, encrypt test data with its public key,
//! KMS-decrypt the private key with the same context, decrypt, compare.
