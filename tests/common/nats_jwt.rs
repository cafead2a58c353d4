//! NATS decentralized auth (JWT v2) minted in a test, as `nsc` would: an operator,
//! accounts it signs, users an account signs, and the `.creds` file a user logs in
//! with. `nsc` is a Go tool this machine cannot install, and the format is small:
//! `base64url(header).base64url(claims).base64url(ed25519 signature of the first two)`,
//! unpadded, the claims' field names those of github.com/nats-io/jwt/v2.
//!
//! Used by tests/external_creds.rs only (`#[path]`), so the other test binaries do not
//! compile it.

use std::time::{SystemTime, UNIX_EPOCH};

use data_encoding::{BASE32_NOPAD, BASE64URL_NOPAD};
use nkeys::KeyPair;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// A signed JWT whose subject is `subject`, named `name`, with `nats` as its
/// type-specific claims, issued (signed) by `issuer`.
pub fn encode(issuer: &KeyPair, subject: &str, name: &str, nats: Value) -> String {
    let header = json!({ "typ": "JWT", "alg": "ed25519-nkey" });
    let issued_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let mut claims = json!({
        "iat": issued_at,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
    });
    // The Go library's `jti` is a hash of the standard claims; the server only reads it
    // as an id, so a hash of ours (unique through the random subject key) does.
    let id = BASE32_NOPAD.encode(&Sha256::digest(claims.to_string().as_bytes()));
    claims["jti"] = Value::String(id);
    claims["nats"] = nats;
    let signed = format!(
        "{}.{}",
        BASE64URL_NOPAD.encode(header.to_string().as_bytes()),
        BASE64URL_NOPAD.encode(claims.to_string().as_bytes())
    );
    let signature = issuer.sign(signed.as_bytes()).expect("sign a JWT");
    format!("{signed}.{}", BASE64URL_NOPAD.encode(&signature))
}

/// The trust root: the server is configured with its JWT.
pub struct Operator {
    key: KeyPair,
    pub jwt: String,
}

impl Operator {
    pub fn new(name: &str) -> Operator {
        let key = KeyPair::new_operator();
        let jwt = encode(
            &key,
            &key.public_key(),
            name,
            json!({ "type": "operator", "version": 2 }),
        );
        Operator { key, jwt }
    }

    /// An account signed by this operator, unlimited, with JetStream when `jetstream`
    /// (the system account must not have it).
    pub fn account(&self, name: &str, jetstream: bool) -> Account {
        let key = KeyPair::new_account();
        let mut limits = json!({
            "subs": -1, "data": -1, "payload": -1,
            "imports": -1, "exports": -1, "wildcards": true,
            "conn": -1, "leaf": -1,
        });
        if jetstream {
            // Any non-zero storage limit enables JetStream for the account; -1 is none.
            for field in ["mem_storage", "disk_storage", "streams", "consumer"] {
                limits[field] = json!(-1);
            }
        }
        let nats = json!({
            "limits": limits,
            "default_permissions": { "pub": {}, "sub": {} },
            "type": "account",
            "version": 2,
        });
        let jwt = encode(&self.key, &key.public_key(), name, nats);
        Account { key, jwt }
    }
}

pub struct Account {
    key: KeyPair,
    pub jwt: String,
}

impl Account {
    pub fn public_key(&self) -> String {
        self.key.public_key()
    }

    /// A user of this account without limits or permission restrictions.
    pub fn user(&self, name: &str) -> User {
        let key = KeyPair::new_user();
        let nats = json!({
            "pub": {}, "sub": {},
            "subs": -1, "data": -1, "payload": -1,
            "type": "user", "version": 2,
        });
        let jwt = encode(&self.key, &key.public_key(), name, nats);
        User { key, jwt }
    }
}

pub struct User {
    key: KeyPair,
    pub jwt: String,
}

impl User {
    pub fn seed(&self) -> String {
        self.key.seed().expect("a user key has a seed")
    }

    /// The `.creds` file, laid out as `nsc generate creds` writes it.
    pub fn creds(&self) -> String {
        creds_file(&self.jwt, &self.seed())
    }
}

/// A `.creds` file holding `jwt` and `seed` (which may not belong together).
pub fn creds_file(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    )
}
