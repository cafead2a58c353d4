//! Payload codecs on raw bytes, both ways. Properties: decoding fails only with
//! `invalid_input`; what decodes re-encodes in the same codec and decodes to the same
//! value (MessagePack values compared bit for bit, NaN included); a JSON document also
//! survives MessagePack and back; the display form is the payload itself or valid JSON;
//! and decoding a small input never holds more heap than linear in its size (a length
//! prefix claiming gigabytes is not believed).
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::envelope::{ContentType, to_display_json};
use switchyard::error::ErrorKind;
use switchyard_fuzz::{Counting, heap_bound, peak_heap, same_msgpack};

#[global_allocator]
static ALLOC: Counting = Counting;

fuzz_target!(|payload: &[u8]| {
    let bound = heap_bound(payload.len());

    let (json, peak) = peak_heap(|| ContentType::Json.decode::<serde_json::Value>(payload));
    assert!(peak <= bound, "JSON: {} bytes held {peak}", payload.len());
    match json {
        Ok(value) => {
            let bytes = ContentType::Json.encode(&value).expect("encode JSON");
            let back: serde_json::Value = ContentType::Json.decode(&bytes).expect("re-decode");
            assert_eq!(back, value);
            let packed = ContentType::MsgPack
                .encode(&value)
                .expect("JSON as MessagePack");
            let unpacked: serde_json::Value =
                ContentType::MsgPack.decode(&packed).expect("and back");
            assert_eq!(unpacked, value);
        }
        Err(err) => assert_eq!(err.kind(), ErrorKind::InvalidInput),
    }

    let (packed, peak) = peak_heap(|| ContentType::MsgPack.decode::<rmpv::Value>(payload));
    assert!(
        peak <= bound,
        "MessagePack: {} bytes held {peak}",
        payload.len()
    );
    match packed {
        Ok(value) => {
            let bytes = ContentType::MsgPack
                .encode(&value)
                .expect("encode MessagePack");
            let back: rmpv::Value = ContentType::MsgPack.decode(&bytes).expect("re-decode");
            assert!(same_msgpack(&back, &value), "{value:?} became {back:?}");
        }
        Err(err) => assert_eq!(err.kind(), ErrorKind::InvalidInput),
    }

    let (shown, peak) = peak_heap(|| to_display_json(payload));
    assert!(peak <= bound + payload.len() * 8, "display held {peak}");
    assert!(
        shown == payload || serde_json::from_slice::<serde_json::Value>(&shown).is_ok(),
        "the display form is neither the payload nor JSON"
    );
});
