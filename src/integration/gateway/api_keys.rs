//! API keys of the gateway's HTTP ingress. A key is named and carries its own rate
//! limit; the configuration holds only its SHA-256, never the key, so a leaked config
//! file, log or backup reveals no credential. Keys are 256 random bits, so a plain
//! (fast, unsalted) SHA-256 is enough: there is no dictionary to try against it, unlike
//! a password.
//!
//! Keys come from `[[gateway.api_keys]]` in the TOML file and from `api_keys_file` (one
//! `name sha256 [rate [burst]]` per line), so operators can rotate keys without editing
//! the main configuration (a restart applies the file). `switchyard api-key new <name>`
//! makes a key and prints both.

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::Error;

/// What every key starts with, so a key is recognisable in a secret scanner.
pub const KEY_PREFIX: &str = "sy_";
/// Requests per second a key may make when its entry names no rate.
pub const DEFAULT_RATE: u32 = 100;
/// Highest rate or burst a key may have.
pub const MAX_RATE: u32 = 1_000_000;
/// Longest key name: it is a metric label and a header value.
const MAX_NAME: usize = 64;

/// One key: its name (in metrics, logs and `Switchyard-Api-Key-Name`), the SHA-256 of
/// the key, and its token bucket: `rate` requests per second, at most `burst` at once.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "FileApiKey")]
pub struct ApiKey {
    pub name: String,
    pub sha256: [u8; 32],
    pub rate: u32,
    pub burst: u32,
}

/// `[[gateway.api_keys]]` as written in the TOML file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileApiKey {
    name: String,
    sha256: String,
    rate: Option<u32>,
    burst: Option<u32>,
}

impl TryFrom<FileApiKey> for ApiKey {
    type Error = String;

    fn try_from(key: FileApiKey) -> Result<ApiKey, String> {
        ApiKey::new(&key.name, &key.sha256, key.rate, key.burst)
    }
}

impl ApiKey {
    /// A key entry, checked: a name of 1-64 `A-Z a-z 0-9 _ . -` starting with a letter
    /// or digit, 64 hex digits of SHA-256, a rate and burst of 1 to 1 000 000 (the
    /// burst defaults to the rate: one second's worth).
    pub fn new(
        name: &str,
        sha256_hex: &str,
        rate: Option<u32>,
        burst: Option<u32>,
    ) -> Result<ApiKey, String> {
        check_name(name)?;
        let sha256 =
            parse_sha256(sha256_hex).map_err(|e| format!("API key {name:?}: sha256 {e}"))?;
        let rate = rate.unwrap_or(DEFAULT_RATE);
        let burst = burst.unwrap_or(rate);
        for (what, value) in [("rate", rate), ("burst", burst)] {
            if !(1..=MAX_RATE).contains(&value) {
                return Err(format!(
                    "API key {name:?}: {what} must be 1 to {MAX_RATE} requests, got {value}"
                ));
            }
        }
        Ok(ApiKey {
            name: name.to_string(),
            sha256,
            rate,
            burst,
        })
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    if name.len() > MAX_NAME || !first_ok || !name.chars().all(allowed) {
        return Err(format!(
            "API key name {name:?} must be 1-{MAX_NAME} of A-Z a-z 0-9 _ . - starting with a \
             letter or digit"
        ));
    }
    Ok(())
}

/// 64 hex digits (either case) as 32 bytes.
fn parse_sha256(text: &str) -> Result<[u8; 32], String> {
    let digits = text.as_bytes();
    if digits.len() != 64 {
        return Err(format!(
            "must be 64 hex digits (the SHA-256 of the key, as `switchyard api-key new` \
             prints it), got {} characters",
            digits.len()
        ));
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(digits.chunks(2)) {
        let nibble = |d: u8| (d as char).to_digit(16);
        match (nibble(pair[0]), nibble(pair[1])) {
            (Some(high), Some(low)) => *byte = (high * 16 + low) as u8,
            _ => return Err("must be hex digits only".into()),
        }
    }
    Ok(out)
}

/// The SHA-256 of a presented key.
pub fn sha256(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The keys of `api_keys_file`: one `name sha256 [rate [burst]]` per line, blank lines
/// and `#` comments ignored. Errors name the line.
pub fn parse_file(text: &str) -> Result<Vec<ApiKey>, String> {
    let mut keys = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let at = |e: String| format!("line {}: {e}", index + 1);
        let fields: Vec<&str> = line.split_whitespace().collect();
        let number = |i: usize| {
            fields
                .get(i)
                .map(|f| {
                    f.parse::<u32>()
                        .map_err(|_| at(format!("{f:?} is not a number")))
                })
                .transpose()
        };
        if !(2..=4).contains(&fields.len()) {
            return Err(at("expected `name sha256 [rate [burst]]`".into()));
        }
        keys.push(ApiKey::new(fields[0], fields[1], number(2)?, number(3)?).map_err(at)?);
    }
    Ok(keys)
}

/// The keys of the TOML file and of the keys file together; a name used twice is
/// refused (its metrics and limits would be ambiguous), and so is a key listed twice.
pub fn merge(mut keys: Vec<ApiKey>, file: Vec<ApiKey>) -> Result<Vec<ApiKey>, String> {
    keys.extend(file);
    for (i, key) in keys.iter().enumerate() {
        if let Some(other) = keys[..i]
            .iter()
            .find(|k| k.name == key.name || k.sha256 == key.sha256)
        {
            let what = if other.name == key.name {
                "name"
            } else {
                "sha256"
            };
            return Err(format!(
                "API keys {:?} and {:?} have the same {what}",
                other.name, key.name
            ));
        }
    }
    Ok(keys)
}

/// A fresh key: [`KEY_PREFIX`] and 32 bytes from the operating system's CSPRNG, hex.
pub fn generate() -> Result<String, Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::internal(format!("no randomness from the system: {e}")))?;
    Ok(format!("{KEY_PREFIX}{}", to_hex(&bytes)))
}

/// `switchyard api-key new`: the key (printed once, for the operator) and the entry to
/// configure, in both forms.
pub fn new_key_text(name: &str, rate: Option<u32>, burst: Option<u32>) -> Result<String, Error> {
    let key = generate()?;
    let hash = to_hex(&sha256(key.as_bytes()));
    // Checked as the configuration will check it, so what is printed is accepted.
    let entry = ApiKey::new(name, &hash, rate, burst).map_err(Error::invalid_input)?;
    Ok(format!(
        "# API key {name:?}: shown once, Switchyard keeps only its SHA-256. Call with\n\
         # `Authorization: Bearer <key>` or `X-Api-Key: <key>`.\n\
         {key}\n\
         # In the configuration file:\n\
         [[gateway.api_keys]]\n\
         name = \"{name}\"\n\
         sha256 = \"{hash}\"\n\
         rate = {rate}\n\
         burst = {burst}\n\
         # Or as a line of gateway.api_keys_file:\n\
         # {name} {hash} {rate} {burst}\n",
        rate = entry.rate,
        burst = entry.burst,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn the_hash_is_sha256_in_hex() {
        // SHA-256("test"), a published test vector.
        assert_eq!(to_hex(&sha256(b"test")), HASH);
        let key = ApiKey::new("ci", &HASH.to_uppercase(), None, None).unwrap();
        assert_eq!(key.sha256, sha256(b"test"));
        assert_eq!((key.rate, key.burst), (DEFAULT_RATE, DEFAULT_RATE));
    }

    #[test]
    fn bad_entries_are_refused() {
        for (name, hash, rate, burst) in [
            ("ci", "abc", None, None),
            ("ci", &HASH.replace('9', "g"), None, None),
            ("", HASH, None, None),
            ("-x", HASH, None, None),
            ("a b", HASH, None, None),
            ("ci", HASH, Some(0), None),
            ("ci", HASH, Some(10), Some(MAX_RATE + 1)),
        ] {
            assert!(
                ApiKey::new(name, hash, rate, burst).is_err(),
                "{name} {hash}"
            );
        }
    }

    #[test]
    fn the_keys_file_is_parsed_line_by_line() {
        let text = format!(
            "# keys\n\nci {HASH} 5 10\nops {} # on call\n",
            "0".repeat(64)
        );
        let keys = parse_file(&text).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!((keys[0].rate, keys[0].burst), (5, 10));
        assert_eq!(keys[1].name, "ops");
        let err = parse_file(&format!("ci {HASH}\nbroken\n")).unwrap_err();
        assert!(err.starts_with("line 2:"), "{err}");
        assert!(parse_file(&format!("ci {HASH} fast")).is_err());
    }

    #[test]
    fn names_and_keys_are_unique() {
        let a = ApiKey::new("a", HASH, None, None).unwrap();
        let b = ApiKey::new("b", &"0".repeat(64), None, None).unwrap();
        assert!(merge(vec![a.clone()], vec![b.clone()]).is_ok());
        let same_name = ApiKey::new("a", &"1".repeat(64), None, None).unwrap();
        assert!(merge(vec![a.clone()], vec![same_name]).is_err());
        let same_key = ApiKey::new("c", HASH, None, None).unwrap();
        assert!(merge(vec![a], vec![same_key]).is_err());
    }

    #[test]
    fn a_new_key_is_random_and_printed_with_its_hash() {
        let (one, two) = (generate().unwrap(), generate().unwrap());
        assert_ne!(one, two);
        assert!(one.starts_with(KEY_PREFIX) && one.len() == KEY_PREFIX.len() + 64);
        let text = new_key_text("ci", Some(5), None).unwrap();
        let key = text.lines().find(|l| l.starts_with(KEY_PREFIX)).unwrap();
        assert!(text.contains(&format!("sha256 = \"{}\"", to_hex(&sha256(key.as_bytes())))));
        assert!(text.contains("rate = 5\nburst = 5\n"));
    }
}
