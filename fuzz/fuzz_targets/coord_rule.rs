//! Coordination rules (`sys.coord.rules.put.<name>`, KV `coord` `rules.<name>`).
//! Properties: a refusal is `invalid_input`; an accepted rule serializes and is accepted
//! again as the same rule; every action validates; matching an event never panics, and
//! a rule never matches the action events it would feed itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use switchyard::error::ErrorKind;
use switchyard::system::coordinator::rules::Rule;

fuzz_target!(|value: &[u8]| {
    let rule = match Rule::parse(value) {
        Ok(rule) => rule,
        Err(err) => {
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
            return;
        }
    };
    let stored = serde_json::to_vec(&rule).expect("an accepted rule encodes");
    assert_eq!(Rule::parse(&stored).expect("accepted again"), rule);
    assert!((1..=16).contains(&rule.actions.len()));
    for action in &rule.actions {
        action.validate().expect("each action validates");
    }
    let data = json!({"to": "unhealthy", "service": "echo", "instance": "i1", "n": 1});
    let _ = rule.matches("events.sys.health.changed", &data);
    let _ = rule.matches("events.orders.eu.created", &data);
    assert!(!rule.matches("events.sys.action.drain", &data) || !rule.on.starts_with("sys.action."));
});
