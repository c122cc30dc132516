//! Test-only helpers: sample resources and Secrets.
