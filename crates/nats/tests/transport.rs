//! The nats:// Sink and Source against a real nats-server, without the
//! fspl binary: what push and pull drivers see.

use fspl_nats::transport::NatsTarget;
use fspl_testkit::nats::NatsServer;
use fspl_transport::pull::{PullOptions, pull};
use fspl_transport::push::{PushOptions, push};

#[test]
fn push_then_pull_moves_every_job_once() {
    let d = tempfile::tempdir().unwrap();
    let server = NatsServer::start(&d.path().join("nats"));
    let ob = fspl_testkit::init_queue(&d.path().join("ob"));
    for s in [3u64, 1, 2] {
        fspl_testkit::write_job(&ob, s, format!("p{s}").as_bytes());
    }
    let url = format!("{}/t", server.url());
    let target = NatsTarget::parse(&url).unwrap();
    let mut sink = fspl_nats::transport::NatsSink::open(target.clone()).unwrap();
    let r = push(&ob, &mut sink, &PushOptions::default()).unwrap();
    assert!(r.complete(), "{r:?}");
    assert_eq!(r.sent, 3);
    let dest = fspl_testkit::init_queue(&d.path().join("dest"));
    let mut source = fspl_nats::transport::NatsSource::open(target).unwrap();
    let q = fspl_queue::Queue::new(&dest);
    let r = pull(&mut source, &q, &PullOptions::default()).unwrap();
    assert!(r.complete(), "{r:?}");
    assert_eq!(r.taken, 3);
    let r = pull(&mut source, &q, &PullOptions::default()).unwrap();
    assert_eq!(r.taken, 0);
    assert_eq!(fspl_testkit::job_names(&dest.join("jobs")).len(), 3);
}
