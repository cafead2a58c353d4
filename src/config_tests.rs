//! Tests of configuration loading: precedence, the TOML file, refused settings.

use super::*;

fn load_toml(text: &str) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, text).unwrap();
    let global = GlobalArgs {
        config: Some(path),
        ..GlobalArgs::default()
    };
    Config::load(&global, None)
}

#[test]
fn defaults_without_a_file() {
    let config = Config::load(&GlobalArgs::default(), None).unwrap();
    assert_eq!(config.admin.to_string(), DEFAULT_ADMIN);
    assert_eq!(config.embedded.listen.to_string(), DEFAULT_NATS_LISTEN);
    assert_eq!(config.nats_url, None);
    assert_eq!(config.gateway, GatewayConfig::default());
    assert_eq!(config.gateway.http.to_string(), DEFAULT_HTTP);
}

#[test]
fn file_values_apply_and_flags_win() {
    let config = load_toml(
        "admin = \"127.0.0.1:9999\"\ngrace = \"3s\"\n[jetstream.streams.EVENTS]\nmax_age = \"1h\"\n",
    )
    .unwrap();
    assert_eq!(config.admin.port(), 9999);
    assert_eq!(config.grace, Duration::from_secs(3));
    assert_eq!(
        config.jetstream.streams["EVENTS"].max_age,
        Some(Duration::from_secs(3600))
    );
    let config = load_toml("http = \"127.0.0.1:18080\"\n[gateway]\ntimeout = \"250ms\"\n").unwrap();
    assert_eq!(config.gateway.http.port(), 18080);
    assert_eq!(config.gateway.timeout, Duration::from_millis(250));
    let config = load_toml("[gateway]\nmax_in_flight = 16\n").unwrap();
    assert_eq!(config.gateway.max_in_flight, 16);
}

#[test]
fn api_keys_come_from_the_file_and_the_keys_file() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, format!("ops {} 5\n", "b".repeat(64))).unwrap();
    let text = format!(
        "[gateway]\nrequire_api_key = true\napi_keys_file = {:?}\n\
         [[gateway.api_keys]]\nname = \"ci\"\nsha256 = \"{}\"\nrate = 10\nburst = 20\n",
        keys.display().to_string(),
        "A".repeat(64)
    );
    let config = load_toml(&text).unwrap();
    assert!(config.gateway.require_api_key);
    let keys: Vec<_> = config
        .gateway
        .api_keys
        .iter()
        .map(|k| (k.name.as_str(), k.sha256[0], k.rate, k.burst))
        .collect();
    assert_eq!(keys, [("ci", 0xaa, 10, 20), ("ops", 0xbb, 5, 5)]);
    let default = Config::load(&GlobalArgs::default(), None).unwrap();
    assert!(!default.gateway.require_api_key);
}

#[test]
fn cache_rules_come_from_the_file_over_the_defaults() {
    let config = Config::load(&GlobalArgs::default(), None).unwrap();
    assert_eq!(config.cache, CacheConfig::default());
    let config =
        load_toml("[cache.default]\nmax_bytes = 1024\n[cache.namespaces.demo]\nttl = \"5m\"\n")
            .unwrap();
    assert_eq!(config.cache.default.max_bytes, 1024);
    assert_eq!(
        config.cache.rule("demo").ttl,
        Some(Duration::from_secs(300))
    );
    assert_eq!(config.cache.rule("demo").max_bytes, 1024);
    assert!(config.cache.rule("status").ttl.is_some());
}

#[test]
fn secure_mode_wants_its_own_server_and_api_keys() {
    let up = UpArgs {
        secure: true,
        ..UpArgs::default()
    };
    let external = GlobalArgs {
        nats: Some("nats://127.0.0.1:4222".into()),
        require_api_key: Some(false),
        ..GlobalArgs::default()
    };
    let err = Config::load(&external, Some(&up)).unwrap_err();
    assert!(err.to_string().contains("--secure"), "{err}");
    let err = Config::load(&GlobalArgs::default(), Some(&up)).unwrap_err();
    assert!(err.to_string().contains("require_api_key"), "{err}");
    let open_http = GlobalArgs {
        require_api_key: Some(false),
        ..GlobalArgs::default()
    };
    let config = Config::load(&open_http, Some(&up)).unwrap();
    assert!(config.embedded.secure && !config.gateway.require_api_key);
    let config = Config::load(&GlobalArgs::default(), None).unwrap();
    assert!(!config.embedded.secure && !config.gateway.require_api_key);
}

#[test]
fn unknown_keys_and_bad_values_are_one_line_errors() {
    for bad in [
        "admn = \"127.0.0.1:1\"",
        "grace = \"soon\"",
        "[jetstream.streams.NOPE]\nmax_age = \"1h\"",
        "[jetstream]\nreplicas = 9",
        "nats = \"nats://bad host:-1\"",
        "log = \"==\"",
        "http = \"localhost\"",
        "[gateway]\ntimeout = \"0s\"",
        "[gateway]\ntimout = \"1s\"",
        "[gateway]\nmax_in_flight = 0",
        "[gateway]\nrequire_api_key = true",
        "[[gateway.api_keys]]\nname = \"ci\"\nsha256 = \"abc\"",
        "[[gateway.api_keys]]\nname = \"ci\"\nsha256 = \"abc\"\nscope = \"all\"",
        "[gateway]\napi_keys_file = \"/nonexistent/keys\"",
        "[cache.default]\nttl = \"soon\"",
        "[cache.namespaces.demo]\nmax_bytes = 0",
        "[cache.namespaces.\"a.b\"]\nttl = \"1s\"",
        "[cache]\ndefualt = {}",
    ] {
        let err = load_toml(bad).unwrap_err();
        assert!(!err.to_string().contains('\n'), "{bad}: {err}");
    }
}

#[test]
fn the_nats_key_is_a_url_or_a_section_with_the_login() {
    let config = load_toml("nats = \"nats://10.0.0.1:4222\"\n").unwrap();
    assert_eq!(config.nats_url.as_deref(), Some("nats://10.0.0.1:4222"));
    assert!(config.nats_auth.user.is_none());
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t0k3n\n").unwrap();
    let config = load_toml(&format!(
        "[nats]\nurl = \"tls://10.0.0.1:4222\"\ntoken_file = \"{}\"\n",
        token.display()
    ))
    .unwrap();
    assert_eq!(config.nats_url.as_deref(), Some("tls://10.0.0.1:4222"));
    assert!(!config.nats_auth.is_empty());
    assert!(!format!("{config:?}").contains("t0k3n"));
    let err = load_toml("[nats]\ntoken = \"inline\"\n").unwrap_err();
    assert!(err.to_string().contains("unknown field `token`"), "{err}");
}
