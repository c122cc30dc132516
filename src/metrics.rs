//! Prometheus metrics served on `/metrics`.
