//! Who may call the HTTP ingress: every request presents an API key
//! (`Authorization: Bearer <key>` or `X-Api-Key: <key>`) when keys are required, and
//! each key has its own token bucket. A request without a known key is answered 401
//! (`WWW-Authenticate: Bearer`), one over its key's rate 429 (`Retry-After`); neither
//! reaches a handler, so nothing is forwarded to NATS.
//!
//! Keys are required when `gateway.require_api_key` is set or any key is configured;
//! without either the ingress stays open (loopback development), and says so once at
//! start. The key and the `Authorization` header are never logged or forwarded: the
//! middleware takes them off the request, and what goes on is the key's name, as
//! `Switchyard-Api-Key-Name` on the forwarded request and `api_key` on the request's
//! log span. Each gateway instance keeps its own buckets: N instances behind a load
//! balancer allow a key up to N times its rate.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;
use tracing::Instrument;

use super::api_keys::{self, ApiKey};
use crate::config::GatewayConfig;
use crate::error::{Error, ErrorKind};
use crate::observability::metrics;

/// The header callers may use instead of `Authorization: Bearer`.
pub const X_API_KEY: &str = "x-api-key";
/// The authenticated key's name, on the request handlers see (HTTP, lower case) and
/// on the forwarded NATS request (`Switchyard-Api-Key-Name`).
pub const KEY_NAME: &str = "switchyard-api-key-name";
/// The `key` label of rejections no key can be named for; key names cannot start with
/// `-`, so it never collides with one.
const NO_KEY: &str = "-";

/// The ingress's keys and their buckets, shared by every request.
pub struct HttpAuth {
    required: bool,
    keys: Vec<Entry>,
}

struct Entry {
    key: ApiKey,
    bucket: Mutex<Bucket>,
}

/// A token bucket: `tokens` left as of `at`, refilled at the key's rate up to its burst.
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Why a request was turned away.
#[derive(Debug, PartialEq)]
enum Rejection {
    /// No `Authorization: Bearer` nor `X-Api-Key`.
    Missing,
    /// A key no entry has the hash of.
    Unknown,
    /// The named key is over its rate; a token is back after the duration.
    RateLimited(String, Duration),
}

/// Checks the configuration's keys setting: keys required but none configured would
/// lock every caller out, so it is refused rather than started.
pub fn check_config(config: &GatewayConfig) -> Result<(), String> {
    if config.require_api_key && config.api_keys.is_empty() {
        return Err(
            "gateway.require_api_key is set (or --secure) but no API key is \
                    configured: make one with `switchyard api-key new <name>` and add it \
                    to [[gateway.api_keys]] or gateway.api_keys_file"
                .into(),
        );
    }
    Ok(())
}

impl HttpAuth {
    pub fn new(config: &GatewayConfig) -> Result<HttpAuth, Error> {
        check_config(config).map_err(Error::invalid_input)?;
        let now = Instant::now();
        let keys = config
            .api_keys
            .iter()
            .map(|key| Entry {
                key: key.clone(),
                bucket: Mutex::new(Bucket {
                    tokens: f64::from(key.burst),
                    at: now,
                }),
            })
            .collect();
        Ok(HttpAuth {
            required: config.require_api_key || !config.api_keys.is_empty(),
            keys,
        })
    }

    pub fn required(&self) -> bool {
        self.required
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// The name of the request's key if it may go on.
    fn admit(&self, headers: &HeaderMap) -> Result<&str, Rejection> {
        let presented = presented_key(headers).ok_or(Rejection::Missing)?;
        let hash = api_keys::sha256(presented.as_bytes());
        // Every entry is compared, in constant time, so the time taken says nothing
        // about which entry (or how much of a hash) matched.
        let mut found = None;
        for entry in &self.keys {
            if bool::from(entry.key.sha256.ct_eq(&hash)) {
                found = Some(entry);
            }
        }
        let entry = found.ok_or(Rejection::Unknown)?;
        entry
            .take(Instant::now())
            .map_err(|wait| Rejection::RateLimited(entry.key.name.clone(), wait))?;
        Ok(&entry.key.name)
    }
}

impl Entry {
    /// One token, or how long until there is one.
    fn take(&self, now: Instant) -> Result<(), Duration> {
        let (rate, burst) = (f64::from(self.key.rate), f64::from(self.key.burst));
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }
}

/// The key in `Authorization: Bearer <key>` (scheme in any case), else in `X-Api-Key`.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim());
    let header = || headers.get(X_API_KEY).and_then(|v| v.to_str().ok());
    bearer
        .or_else(header)
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

/// The middleware in front of every route of the ingress.
pub async fn guard(
    State(auth): State<Arc<HttpAuth>>,
    mut request: Request,
    next: Next,
) -> Response {
    let headers = request.headers_mut();
    // A caller cannot name a key itself: only this middleware sets the name.
    headers.remove(KEY_NAME);
    if !auth.required {
        return next.run(request).await;
    }
    let admitted = auth.admit(headers).map(str::to_owned);
    // The credentials stop here: no handler, log or forwarded request sees them.
    headers.remove(header::AUTHORIZATION);
    headers.remove(X_API_KEY);
    match admitted {
        Ok(name) => {
            if let Ok(value) = HeaderValue::from_str(&name) {
                request.headers_mut().insert(KEY_NAME, value);
            }
            let span = tracing::info_span!("http", api_key = %name);
            next.run(request).instrument(span).await
        }
        Err(rejection) => refuse(rejection),
    }
}

fn refuse(rejection: Rejection) -> Response {
    let (reason, key) = match &rejection {
        Rejection::Missing | Rejection::Unknown => ("unauthenticated", NO_KEY),
        Rejection::RateLimited(name, _) => ("rate_limited", name.as_str()),
    };
    metrics::gateway_http_rejected(reason, key);
    tracing::debug!(reason, api_key = %key, "gateway HTTP request refused");
    let (error, extra) = match rejection {
        Rejection::Missing => (
            Error::new(
                ErrorKind::Unauthenticated,
                "an API key is required: Authorization: Bearer <key> or X-Api-Key: <key>",
            ),
            (
                header::WWW_AUTHENTICATE,
                "Bearer realm=\"switchyard\"".into(),
            ),
        ),
        Rejection::Unknown => (
            Error::new(ErrorKind::Unauthenticated, "the API key is not valid"),
            (
                header::WWW_AUTHENTICATE,
                "Bearer realm=\"switchyard\", error=\"invalid_token\"".into(),
            ),
        ),
        Rejection::RateLimited(name, wait) => {
            // Whole seconds, rounded up, at least 1 (RFC 9110 delay-seconds).
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            (
                Error::new(
                    ErrorKind::Overloaded,
                    format!("API key {name:?} is over its rate limit; retry in {seconds} s"),
                ),
                (header::RETRY_AFTER, seconds.max(1).to_string()),
            )
        }
    };
    let mut response = super::http::error_response(&error);
    if let Ok(value) = HeaderValue::from_str(&extra.1) {
        response.headers_mut().insert(extra.0, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(keys: &[(&str, &str, u32, u32)]) -> HttpAuth {
        let api_keys = keys
            .iter()
            .map(|(name, key, rate, burst)| {
                let hash = api_keys::to_hex(&api_keys::sha256(key.as_bytes()));
                ApiKey::new(name, &hash, Some(*rate), Some(*burst)).unwrap()
            })
            .collect();
        HttpAuth::new(&GatewayConfig {
            api_keys,
            ..GatewayConfig::default()
        })
        .unwrap()
    }

    fn with(name: &str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
        headers
    }

    #[test]
    fn keys_are_found_by_bearer_or_header() {
        let auth = auth(&[("ci", "sy_one", 100, 100), ("ops", "sy_two", 100, 100)]);
        assert!(auth.required());
        assert_eq!(
            auth.admit(&with("authorization", "Bearer sy_one")),
            Ok("ci")
        );
        assert_eq!(
            auth.admit(&with("authorization", "bearer  sy_two ")),
            Ok("ops")
        );
        assert_eq!(auth.admit(&with("x-api-key", "sy_two")), Ok("ops"));
        assert_eq!(auth.admit(&HeaderMap::new()), Err(Rejection::Missing));
        assert_eq!(
            auth.admit(&with("authorization", "Basic c3lfb25lOg==")),
            Err(Rejection::Missing)
        );
        assert_eq!(
            auth.admit(&with("x-api-key", "sy_three")),
            Err(Rejection::Unknown)
        );
    }

    #[test]
    fn the_bucket_allows_the_burst_then_the_rate() {
        let auth = auth(&[("ci", "sy_one", 10, 3)]);
        let entry = &auth.keys[0];
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(entry.take(start), Ok(()));
        }
        let wait = entry.take(start).unwrap_err();
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100));
        // 10 per second: a token every 100 ms, never more than the burst.
        assert_eq!(entry.take(start + Duration::from_millis(100)), Ok(()));
        assert!(entry.take(start + Duration::from_millis(100)).is_err());
        let later = start + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(entry.take(later), Ok(()));
        }
        assert!(entry.take(later).is_err());
    }

    #[test]
    fn required_without_keys_is_refused_and_open_without_either() {
        let config = GatewayConfig {
            require_api_key: true,
            ..GatewayConfig::default()
        };
        assert!(check_config(&config).is_err());
        assert!(HttpAuth::new(&config).is_err());
        let open = HttpAuth::new(&GatewayConfig::default()).unwrap();
        assert!(!open.required());
    }
}
