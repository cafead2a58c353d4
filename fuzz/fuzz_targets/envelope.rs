//! A received message (`Name: value` lines, an empty line, the payload) → the envelope. Properties: reading the
//! attributes never panics and fails only with a typed error (400 or 415); the
//! content-type check and the full read agree; attributes read back from the headers
//! Switchyard writes are the same attributes; a payload that decodes re-encodes in its
//! codec and decodes to the same value; the decoder's heap stays linear in the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::envelope::{Envelope, Meta, content_type_of};
use switchyard::error::ErrorKind;
use switchyard_fuzz::{Counting, heap_bound, message, peak_heap, same_msgpack};

#[global_allocator]
static ALLOC: Counting = Counting;

fuzz_target!(|data: &[u8]| {
    let (map, payload) = message(data);
    let checked = content_type_of(Some(&map));
    let meta = Meta::from_headers(Some(&map), "io.switchyard.fuzz");
    match (&checked, &meta) {
        (Ok(codec), Ok(meta)) => assert_eq!(*codec, meta.content_type),
        (Err(a), Err(b)) => assert_eq!(a.kind(), b.kind()),
        _ => panic!("content_type_of {checked:?} and from_headers {meta:?} disagree"),
    }
    let meta = match meta {
        Ok(meta) => meta,
        Err(err) => {
            assert!(
                matches!(
                    err.kind(),
                    ErrorKind::InvalidInput | ErrorKind::UnsupportedMediaType
                ),
                "{err}"
            );
            // What the responder answers such a message with must be buildable.
            let _ = Meta::unreadable(Some(&map)).to_headers();
            return;
        }
    };
    // The headers Switchyard writes read back as the same attributes.
    let written = meta.to_headers();
    let again = Meta::from_headers(Some(&written), "io.switchyard.other").expect("re-read");
    assert_eq!(again, meta);
    let reply = meta.follow_up("urn:switchyard:fuzz", "io.switchyard.fuzz.reply");
    assert_eq!(reply.correlation_id, meta.correlation_id);
    let _ = reply.to_headers();

    let (decoded, peak) =
        peak_heap(|| Envelope::<rmpv::Value>::decode(Some(&map), payload, "io.switchyard.fuzz"));
    assert!(
        peak <= heap_bound(payload.len()),
        "decoding {} bytes held {peak} bytes",
        payload.len()
    );
    match decoded {
        Ok(envelope) => {
            assert_eq!(envelope.meta.content_type, meta.content_type);
            let (_, bytes) = envelope.encode().expect("a decoded value encodes");
            let back = Envelope::<rmpv::Value>::decode(Some(&written), &bytes, "x")
                .expect("what Switchyard encodes decodes");
            assert!(
                same_msgpack(&back.data, &envelope.data),
                "{:?} became {:?}",
                envelope.data,
                back.data
            );
        }
        Err(err) => assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}"),
    }
});
