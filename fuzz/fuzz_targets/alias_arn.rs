//! The alias ARN parser: whatever it accepts reads back as itself, and its parts are the ARN's.

#![no_main]

use kekeeper::arn::AliasArn;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(arn) = AliasArn::parse(text) else {
        return;
    };
    assert_eq!(arn.as_str(), text);
    assert_eq!(arn.to_string(), text);
    assert_eq!(AliasArn::parse(arn.as_str()).as_ref(), Ok(&arn));
    let rebuilt = format!(
        "arn:{}:kms:{}:{}:alias/{}",
        arn.partition(),
        arn.region(),
        arn.account(),
        arn.alias_name()
    );
    assert_eq!(rebuilt, text);
});
