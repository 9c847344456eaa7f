use super::*;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(rel)
}

fn load_file(path: &Path, env: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
    load_with_env(
        &ConfigSource::Explicit(path.to_path_buf()),
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

fn only_issue(e: &ConfigError) -> &ConfigIssue {
    assert_eq!(e.issues.len(), 1, "expected one issue, got: {e}");
    &e.issues[0]
}

#[test]
fn example_config_parses_and_builds_a_router() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/obdgw.toml");
    let loaded = load_file(&path, &[]).expect("config/obdgw.toml must be valid");
    let c = &loaded.config;
    assert_eq!(c.router.ports.len(), 3);
    assert_eq!(c.router.routes.len(), 2);
    assert_eq!(c.router.routes[0].overflow, OverflowPolicy::ShedOldest);
    let router = crate::router::from_config(&c.router).unwrap();
    assert_eq!(router.port_count(), 3);
}

#[test]
fn example_config_documents_every_default() {
    // Every key of the default configuration appears in the example, with its default value
    // unless the example overrides it on purpose (ports and routes).
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/obdgw.toml"))
            .unwrap();
    let example: toml::Table = text.parse().unwrap();
    let defaults: toml::Table = toml::from_str(&render(&Config::default())).unwrap();
    // Keys shown commented out, with their default, because setting them in the file would
    // change behaviour (an explicit daemon.state_dir makes `obdgw api` run by a person use
    // the service's directory; see docs/cloud.md).
    const COMMENTED: [(&str, &str); 1] = [("daemon.state_dir", "# state_dir = \"/var/lib/obdgw\"")];
    for (key, line) in COMMENTED {
        assert!(
            text.contains(line),
            "config/obdgw.toml should show `{key}` as `{line}`"
        );
    }
    fn check(prefix: &str, defaults: &toml::Table, example: &toml::Table) {
        for (k, v) in defaults {
            let key = format!("{prefix}{k}");
            if COMMENTED.iter().any(|(c, _)| *c == key) {
                continue;
            }
            let Some(ex) = example.get(k) else {
                panic!("config/obdgw.toml lacks key `{key}`");
            };
            match (v, ex) {
                (toml::Value::Table(d), toml::Value::Table(e)) => check(&format!("{key}."), d, e),
                (toml::Value::Array(_), _) => {}
                _ => assert_eq!(v, ex, "config/obdgw.toml: `{key}` should show its default"),
            }
        }
    }
    check("", &defaults, &example);
}

#[test]
fn valid_fixtures_load() {
    for name in ["minimal.toml", "fanout.toml"] {
        let l = load_file(&fixture(&format!("valid/{name}")), &[])
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        crate::router::from_config(&l.config.router).unwrap();
    }
    let l = load_file(&fixture("valid/minimal.toml"), &[]).unwrap();
    assert_eq!(l.config.log.level, "debug");
    assert_eq!(l.config.router, RouterConfig::default());
}

#[test]
fn every_invalid_fixture_is_rejected() {
    let dir = fixture("invalid");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let err = load_file(&path, &[]).expect_err(&path.display().to_string());
        assert!(!err.issues.is_empty());
        n += 1;
    }
    assert!(n >= 6, "expected at least 6 invalid fixtures, found {n}");
}

#[test]
fn unknown_key_names_key_file_and_line() {
    let path = fixture("invalid/unknown_key.toml");
    let err = load_file(&path, &[]).unwrap_err();
    let issue = only_issue(&err);
    assert_eq!(issue.key, "router.queue_capcity");
    assert_eq!(issue.source, format!("{}:6", path.display()));
    assert!(issue.message.contains("unknown key"), "{issue}");
    assert!(issue.message.contains("queue_capacity"), "{issue}");
    let text = err.to_string();
    assert!(text.contains("router.queue_capcity") && text.contains("unknown_key.toml:6"));
}

#[test]
fn type_error_names_key_and_line() {
    let path = fixture("invalid/bad_types.toml");
    let err = load_file(&path, &[]).unwrap_err();
    let issue = only_issue(&err);
    assert_eq!(issue.key, "daemon.shutdown_timeout_ms");
    assert_eq!(issue.source, format!("{}:2", path.display()));
    assert!(issue.message.contains("string"), "{issue}");
}

#[test]
fn validation_errors_name_key_and_line() {
    let path = fixture("invalid/unknown_port.toml");
    let err = load_file(&path, &[]).unwrap_err();
    let issue = only_issue(&err);
    assert_eq!(issue.key, "router.routes[0].to[0]");
    assert_eq!(issue.source, format!("{}:6", path.display()));
    assert!(issue.message.contains("unknown port `nowhere`"), "{issue}");
    assert!(issue.message.contains("declared ports: vehicle"), "{issue}");

    let path = fixture("invalid/bad_filter.toml");
    let err = load_file(&path, &[]).unwrap_err();
    assert_eq!(err.issues.len(), 2, "{err}");
    assert_eq!(err.issues[0].key, "router.routes[0].kinds[1]");
    assert_eq!(err.issues[0].source, format!("{}:10", path.display()));
    assert!(err.issues[0].message.contains("`lin`"));
    assert_eq!(err.issues[1].key, "router.routes[0].ids[0]");
    assert!(err.issues[1].message.contains("range start above its end"));

    let err = load_file(&fixture("invalid/policy_conflict.toml"), &[]).unwrap_err();
    let issue = only_issue(&err);
    assert_eq!(issue.key, "router.routes[1].overflow");
    assert!(issue.message.contains("sink `sink`"), "{issue}");

    let err = load_file(&fixture("invalid/bad_level.toml"), &[]).unwrap_err();
    assert_eq!(only_issue(&err).key, "log.level");
}

#[test]
fn syntax_error_names_file_and_line() {
    let path = fixture("invalid/syntax.toml");
    let err = load_file(&path, &[]).unwrap_err();
    let issue = only_issue(&err);
    assert_eq!(issue.source, format!("{}:3", path.display()));
    assert!(issue.message.contains("invalid TOML"));
}

#[test]
fn env_overrides_file_and_is_named_in_errors() {
    let path = fixture("valid/minimal.toml");
    let l = load_file(
        &path,
        &[
            ("OBDGW_LOG__LEVEL", "warn"),
            ("OBDGW_ROUTER__QUEUE_CAPACITY", "4096"),
            ("OBDGW_CONFIG", "/ignored/because/it/is/the/cli/option"),
            ("UNRELATED", "x"),
        ],
    )
    .unwrap();
    assert_eq!(l.config.log.level, "warn");
    assert_eq!(l.config.router.queue_capacity, 4096);

    let err = load_file(&path, &[("OBDGW_ROUTER__QUEUE_CAPACITY", "0")]).unwrap_err();
    let issue = only_issue(&err);
    assert_eq!(issue.key, "router.queue_capacity");
    assert_eq!(
        issue.source,
        "environment variable OBDGW_ROUTER__QUEUE_CAPACITY"
    );

    let err = load_file(&path, &[("OBDGW_DAEMON__SHUTDOWN_TIMEOUT_MS", "soon")]).unwrap_err();
    assert_eq!(
        only_issue(&err).source,
        "environment variable OBDGW_DAEMON__SHUTDOWN_TIMEOUT_MS"
    );

    let err = load_file(&path, &[("OBDGW_LOG__COLOUR", "yes")]).unwrap_err();
    let issue = only_issue(&err);
    assert_eq!(issue.key, "log.colour");
    assert_eq!(issue.source, "environment variable OBDGW_LOG__COLOUR");
}

#[test]
fn explicit_missing_file_is_an_error_default_missing_is_a_warning() {
    let missing = fixture("does-not-exist.toml");
    let err = load_file(&missing, &[]).unwrap_err();
    assert!(err.to_string().contains("does-not-exist.toml"), "{err}");
    assert!(err.to_string().contains("--config"), "{err}");

    let l = load_with_env(
        &ConfigSource::Default(missing.clone()),
        Vec::<(String, String)>::new(),
    )
    .unwrap();
    assert_eq!(l.config, Config::default());
    assert!(l.file.is_none());
    assert_eq!(l.warnings.len(), 1);
    assert!(l.warnings[0].contains("built-in defaults"));
}

#[test]
fn defaults_are_valid_and_attributed() {
    assert!(validate(&Config::default()).is_empty());
    let l = load_with_env(
        &ConfigSource::Default(fixture("none.toml")),
        vec![("OBDGW_ROUTER__QUEUE_CAPACITY".to_string(), "0".to_string())],
    )
    .unwrap_err();
    assert_eq!(
        l.issues[0].source,
        "environment variable OBDGW_ROUTER__QUEUE_CAPACITY"
    );
}

#[test]
fn render_round_trips() {
    let l = load_file(&fixture("valid/fanout.toml"), &[]).unwrap();
    let text = render(&l.config);
    let back: Config = toml::from_str(&text).unwrap();
    assert_eq!(back, l.config);
}

#[test]
fn a_quoted_non_ascii_environment_value_with_an_escape_does_not_panic() {
    // Found by the `config` fuzz target: figment's unescaping panicked on this shape.
    for raw in ["\"é\\n\"", "\"vte\u{e7}\\r.p\"", "ü\\"] {
        let r = load_with_env(
            &ConfigSource::Default(fixture("none.toml")),
            vec![("OBDGW_LOG__LEVEL".to_string(), raw.to_string())],
        );
        // Taken as a plain string: an invalid log level, reported, not a crash.
        let e = r.unwrap_err();
        assert_eq!(e.issues[0].key, "log.level", "{raw}: {e}");
    }
}
