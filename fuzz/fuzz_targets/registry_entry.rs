//! Registry entries (KV `registry`, `<service>.<instance>`), written by every service
//! instance, so by anyone with access to the bucket. Properties: a refusal is
//! `invalid_input`; an accepted entry re-encodes to an equal entry; its key is either a
//! valid `<service>.<instance>` that splits back into the same names, or refused with
//! `invalid_input`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::error::ErrorKind;
use switchyard::integration::registry::RegistryEntry;
use switchyard::integration::registry::entry::split_key;

fuzz_target!(|value: &[u8]| {
    let entry = match RegistryEntry::from_json(value) {
        Ok(entry) => entry,
        Err(err) => {
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
            return;
        }
    };
    let stored = entry.to_json().expect("encodes");
    assert_eq!(
        RegistryEntry::from_json(&stored).expect("decodes again"),
        entry
    );
    match entry.key() {
        Ok(key) => assert_eq!(
            split_key(&key),
            Some((entry.name.as_str(), entry.instance.as_str()))
        ),
        Err(err) => assert_eq!(err.kind(), ErrorKind::InvalidInput),
    }
    let _ = entry.health.is_live();
});
