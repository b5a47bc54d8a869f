//! Plugging the backend in costs nothing: the runtime (and TLS) start only
//! when an s3:// location is opened. (A test binary of its own: other
//! tests start the runtime.)

#[test]
fn registering_the_backend_starts_no_runtime() {
    fspl_s3::register();
    let e = fspl_transport::open_sink(&fspl_transport::Location::parse("s3:///x").unwrap_or(
        fspl_transport::Location::Remote {
            scheme: "s3".into(),
            url: "s3:///x".into(),
        },
    ))
    .err()
    .unwrap();
    assert!(e.to_string().contains("no bucket"), "{e}");
    assert!(!fspl_s3::runtime::started());
}
