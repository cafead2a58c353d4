//! Other JSON read back from NATS: task states (KV `tasks`) and the server's consumer
//! advisories (stream `DLQ_ADVISORIES`), both writable by anyone with access to them.
//! Properties: a task state that decodes re-encodes to an equal state (an unreadable
//! one is `internal`, the stored value being Switchyard's own); an advisory is accepted
//! only with a dead-letter type, and its failure, origin and time never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::error::ErrorKind;
use switchyard::resilience::deadletter::advisory::{Advisory, MAX_DELIVER_TYPE, TERMINATED_TYPE};
use switchyard::resilience::tasks::state::TaskState;

fuzz_target!(|value: &[u8]| {
    match TaskState::from_json(value) {
        Ok(state) => {
            let stored = state.to_json().expect("encodes");
            assert_eq!(TaskState::from_json(&stored).expect("decodes again"), state);
            let _ = state.state.is_final();
        }
        Err(err) => assert_eq!(err.kind(), ErrorKind::Internal, "{err}"),
    }
    match Advisory::parse(value) {
        Ok(advisory) => {
            assert!(advisory.kind == MAX_DELIVER_TYPE || advisory.kind == TERMINATED_TYPE);
            let failure = advisory.failure();
            assert!(!failure.header_text().contains(['\r', '\n']));
            let _ = (advisory.origin(), advisory.time());
        }
        Err(err) => assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}"),
    }
});
