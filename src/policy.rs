//! Rotation and readiness as policy chains: ordered pure functions with an injected clock.
