//! The connection layer against a real nats-server: plain, with a
//! `.creds` file made here, refused credentials (permanent, one line),
//! and a server that is not there (transient).

use std::time::Duration;

use fspl_nats::ConnectConfig;
use fspl_testkit::nats::{JwtAuth, NatsServer, Options, write_private};

fn config(url: String) -> ConnectConfig {
    ConnectConfig {
        servers: vec![url],
        connect_timeout: Duration::from_secs(5),
        ..ConnectConfig::default()
    }
}

#[test]
fn connects_and_a_stream_is_created_with_the_retention_asked() {
    let d = tempfile::tempdir().unwrap();
    let server = NatsServer::start(&d.path().join("nats"));
    let client = config(server.url()).connect_blocking().unwrap();
    let js = fspl_nats::jetstream::context(client, Duration::from_secs(5), 16).unwrap();
    let spec = fspl_nats::jetstream::StreamSpec {
        name: "t1".into(),
        subjects: vec!["t1.x".into()],
        retention: async_nats_retention_workqueue(),
        max_age: Duration::from_secs(3600),
        duplicate_window: Duration::from_secs(60),
        storage: fspl_nats::jetstream::StorageType::File,
    };
    fspl_nats::runtime::block_on(fspl_nats::jetstream::ensure_stream(&js, &spec))
        .unwrap()
        .unwrap();
    // Asking again for it with another retention is refused, permanently.
    let mut other = spec.clone();
    other.retention = fspl_nats::jetstream::RetentionPolicy::Limits;
    let e = fspl_nats::runtime::block_on(fspl_nats::jetstream::ensure_stream(&js, &other))
        .unwrap()
        .unwrap_err();
    assert!(!e.is_transient(), "{e}");
    assert!(e.to_string().contains("retention workqueue"), "{e}");
}

fn async_nats_retention_workqueue() -> fspl_nats::jetstream::RetentionPolicy {
    fspl_nats::jetstream::RetentionPolicy::WorkQueue
}

#[test]
fn creds_file_made_with_nkeys_is_accepted_and_a_stranger_one_refused_in_one_line() {
    let d = tempfile::tempdir().unwrap();
    let server = NatsServer::start_with(
        &d.path().join("nats"),
        Options {
            auth: Some(JwtAuth::new()),
            ..Options::default()
        },
    );
    let good = server.write_creds(&d.path().join("good.creds"));
    let mut c = config(server.url());
    c.creds = Some(good);
    let client = c.connect_blocking().unwrap();
    // JetStream works for that account.
    let js = fspl_nats::jetstream::context(client, Duration::from_secs(5), 16).unwrap();
    let spec = fspl_nats::jetstream::StreamSpec {
        name: "auth".into(),
        subjects: vec!["auth.x".into()],
        retention: fspl_nats::jetstream::RetentionPolicy::WorkQueue,
        max_age: Duration::ZERO,
        duplicate_window: Duration::from_secs(60),
        storage: fspl_nats::jetstream::StorageType::File,
    };
    fspl_nats::runtime::block_on(fspl_nats::jetstream::ensure_stream(&js, &spec))
        .unwrap()
        .unwrap();

    let bad = d.path().join("bad.creds");
    write_private(
        &bad,
        &server.auth.as_ref().unwrap().stranger_creds("mallory"),
    );
    c.creds = Some(bad.clone());
    let e = c.connect_blocking().unwrap_err();
    let line = fspl_nats::error::one_line(&e);
    eprintln!("bad creds: {line}");
    assert!(!e.is_transient(), "{line}");
    assert!(!line.contains('\n'), "{line}");
    assert!(line.contains("refused"), "{line}");
    assert!(line.contains(bad.to_str().unwrap()), "{line}");

    // No credentials at all: refused too.
    c.creds = None;
    let e = c.connect_blocking().unwrap_err();
    assert!(!e.is_transient(), "{e}");

    // Not a creds file: said before connecting.
    let junk = d.path().join("junk.creds");
    write_private(&junk, "hello\n");
    c.creds = Some(junk);
    let e = c.connect_blocking().unwrap_err();
    assert!(matches!(e, fspl_nats::NatsError::BadCreds { .. }), "{e:?}");
}

#[test]
fn a_server_that_is_not_there_is_a_transient_error() {
    let port = fspl_testkit::free_port();
    let mut c = config(format!("nats://127.0.0.1:{port}"));
    c.connect_timeout = Duration::from_secs(2);
    let e = c.connect_blocking().unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    assert!(e.to_string().contains(&port.to_string()), "{e}");
}

#[test]
fn a_stopped_server_restarts_on_its_port_with_its_streams() {
    let d = tempfile::tempdir().unwrap();
    let mut server = NatsServer::start(&d.path().join("nats"));
    let port = server.port;
    let client = config(server.url()).connect_blocking().unwrap();
    let js = fspl_nats::jetstream::context(client, Duration::from_secs(5), 16).unwrap();
    let spec = fspl_nats::jetstream::StreamSpec {
        name: "keep".into(),
        subjects: vec!["keep.x".into()],
        retention: fspl_nats::jetstream::RetentionPolicy::Limits,
        max_age: Duration::ZERO,
        duplicate_window: Duration::from_secs(60),
        storage: fspl_nats::jetstream::StorageType::File,
    };
    fspl_nats::runtime::block_on(async {
        fspl_nats::jetstream::ensure_stream(&js, &spec)
            .await
            .unwrap();
        js.publish("keep.x", "one".into())
            .await
            .unwrap()
            .await
            .unwrap();
    })
    .unwrap();
    server.kill();
    server.start_again();
    assert_eq!(server.port, port);
    let client = config(server.url()).connect_blocking().unwrap();
    let js = fspl_nats::jetstream::context(client, Duration::from_secs(5), 16).unwrap();
    let n = fspl_nats::runtime::block_on(async {
        let mut s = js.get_stream("keep").await.unwrap();
        s.info().await.unwrap().state.messages
    })
    .unwrap();
    assert_eq!(n, 1);
}
