//! The RecordingKeyConfig controller: reconcile, error policy, run.
