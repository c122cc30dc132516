//! The AWS SDK implementation of [`super::Kms`].
