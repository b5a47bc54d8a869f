//! A minimal push loop over `SshSink`, for measuring the ssh transport
//! before `fspl push` drives it: `push_ssh OUTBOX ssh://HOST/QUEUE`.
//! Sends every job of OUTBOX in seq order and removes each acknowledged
//! one (then one directory fsync).

use std::ffi::OsString;

use fspl_transport::ssh::{SshOptions, SshSink, SshTarget};
use fspl_transport::{Ack, Location, OutgoingJob, Sink};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (outbox, url) = (&args[1], &args[2]);
    let q = fspl_queue::Queue::new(outbox);
    let mut jobs: Vec<(u64, OsString)> = std::fs::read_dir(q.jobs_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| fspl_queue::classify(n) == fspl_queue::EntryKind::Job)
        .map(|n| (q.read_job_header(&n, None).unwrap().header.seq, n))
        .collect();
    jobs.sort();
    let target = SshTarget::from_location(&Location::parse(url).unwrap()).unwrap();
    let mut sink = SshSink::connect(&target, &SshOptions::default()).unwrap_or_else(|e| {
        eprintln!("push_ssh: {e}");
        std::process::exit(1)
    });
    let mut done = 0;
    let mut handle = |acks: Vec<Ack>| {
        for a in acks {
            match a {
                Ack::Durable(id) => {
                    std::fs::remove_file(q.job_path(&jobs[id as usize].1)).unwrap();
                    done += 1;
                }
                Ack::Refused { id, reason } => eprintln!("refused {id}: {reason}"),
            }
        }
    };
    for (i, (seq, name)) in jobs.iter().enumerate() {
        let mut f = std::fs::File::open(q.job_path(name)).unwrap();
        let len = f.metadata().unwrap().len();
        let mut job = OutgoingJob {
            name,
            seq: Some(*seq),
            len,
            reader: &mut f,
        };
        sink.send(i as u64, &mut job).unwrap();
        if i % 64 == 63 {
            handle(sink.poll().unwrap());
        }
    }
    handle(sink.finish().unwrap_or_else(|e| {
        eprintln!("push_ssh: {e}");
        std::process::exit(1)
    }));
    fspl_queue::durable::sync_dir(q.jobs_dir()).unwrap();
    if done != jobs.len() {
        eprintln!("push_ssh: {done} of {} acknowledged", jobs.len());
        std::process::exit(1);
    }
}
