//! A manifest file as `kekeeper test -f` and `keypair generate -f` read it (YAML, JSON being
//! YAML too): the input limits, the documents, each RecordingKeyConfig validated as the
//! controller would, with and without an operator region.

#![no_main]

use kekeeper::commands::{input_text, parse_manifests};
use kekeeper::config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = input_text(data.to_vec(), "fuzz") else {
        return;
    };
    let Ok(manifests) = parse_manifests(&text, "fuzz") else {
        return;
    };
    assert!(!manifests.is_empty(), "Ok without a RecordingKeyConfig");
    for manifest in &manifests {
        let _ = manifest.qualified_name();
        for region in [None, Some("us-east-1"), Some("us-gov-west-1")] {
            if let Ok(valid) = config::validate(&manifest.spec, region) {
                for org in &valid.organization_ids {
                    let _ = valid.context_for(org);
                }
            }
        }
    }
});
