//! Alert rules: JSON values of KV `coord` `alerts.<name>`, and the TOML rules file
//! (`[alerts] file`). Properties: a refusal is `invalid_input`; an accepted rule
//! validates, serializes and is accepted again as the same rule (its `for` duration
//! included); a file's rules all have valid names.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::error::ErrorKind;
use switchyard::observability::alerts::rules::{AlertRule, parse_file};
use switchyard::subjects::validate_token;

fuzz_target!(|value: &[u8]| {
    match AlertRule::parse_json(value) {
        Ok(rule) => {
            rule.validate().expect("an accepted rule validates");
            let stored = serde_json::to_vec(&rule).expect("encodes");
            let again = AlertRule::parse_json(&stored).expect("accepted again");
            assert_eq!(again, rule);
        }
        Err(err) => assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}"),
    }
    if let Ok(text) = std::str::from_utf8(value) {
        match parse_file(text) {
            Ok(rules) => {
                for (name, rule) in &rules {
                    validate_token("alert rule", name).expect("valid name");
                    rule.validate().expect("valid rule");
                }
            }
            Err(err) => assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}"),
        }
    }
});
