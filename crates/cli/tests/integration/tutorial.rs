//! The Filespooler tutorial, end to end, through a shell: a sender prepares
//! jobs and ships them base64-encoded through a "sync" directory, they
//! arrive out of order, the receiver runs them in order, a failing job
//! blocks the queue until fixed, a job is skipped with queue-set-next, and
//! a second queue runs in Timestamp order. The same flow is run with every
//! combination of sender and receiver binaries; everything observable must
//! be the same. (The README's own tutorial is run word for word by
//! `newcomer::readme_tutorial_runs_verbatim_in_a_fresh_home`.)

use crate::both::*;

/// The receiver's command: checks the FSPL_JOB_* variables against each
/// other and the file system, prints what it got, and fails on a payload
/// containing "fail" until the file `fixed` exists.
const RUN: &str = r#"
case "$FSPL_JOB_FILENAME" in fspl-*.fspl) ;; *) echo "bad filename"; exit 9;; esac
[ "$FSPL_JOB_FULLPATH" = "$FSPL_JOB_QUEUEDIR/jobs/$FSPL_JOB_FILENAME" ] || { echo "bad fullpath"; exit 9; }
[ -f "$FSPL_JOB_FULLPATH" ] || { echo "job file missing"; exit 9; }
payload=$(cat)
printf 'seq=%s queue=%s args=' "$FSPL_SEQ" "$FSPL_JOB_QUEUEDIR"
printf '[%s]' "$@"
printf ' env=%s payload=%s\n' "${FSPL_SET_WHO-unset}" "$payload"
case "$payload" in *fail*) [ -e fixed ] || exit 1;; esac
exit 0
"#;

/// One step's observable result.
#[derive(Debug, PartialEq, Eq)]
struct Step {
    name: &'static str,
    code: Option<i32>,
    stdout: String,
    nextseq: Option<String>,
    jobs_left: usize,
}

struct Flow {
    side: Side,
    steps: Vec<Step>,
}

impl Flow {
    /// Run a shell step with $S (sender) and $R (receiver) set.
    fn step(&mut self, name: &'static str, sender: Impl, receiver: Impl, script: &str) {
        let full = format!(
            "S='{}'; R='{}'; RUN='{}'\n{script}",
            sender.bin().display(),
            receiver.bin().display(),
            RUN.replace('\'', r"'\''")
        );
        let o = self.side.sh(&full);
        let q = self.side.state("q");
        self.steps.push(Step {
            name,
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            nextseq: q.nextseq.clone(),
            jobs_left: q.job_names().len(),
        });
    }

    fn get(&self, name: &str) -> &Step {
        self.steps
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no step {name}"))
    }
}

fn tutorial(sender: Impl, receiver: Impl) -> Flow {
    let mut f = Flow {
        side: Side::new(receiver),
        steps: Vec::new(),
    };
    let (s, r) = (sender, receiver);
    f.side.write("data1", b"first payload");
    f.side.write("data2", b"second payload");
    f.side.write("sync/.keep", b"");
    f.step("first number", s, r, r#""$S" prepare-get-next -s seq"#);
    f.step(
        "send 1-3",
        s,
        r,
        r#"set -e
        FSPL_SET_WHO=alice "$S" prepare -s seq -i data1 -- hello "two words" | base64 > sync/job1.b64
        "$S" prepare -s seq -i data2 | base64 > sync/job2.b64
        echo "third payload" | "$S" prepare -s seq -i - -- 3 | base64 > sync/job3.b64
        "$S" prepare-get-next -s seq"#,
    );
    f.step("init", s, r, r#""$R" queue-init -q q"#);
    f.step(
        "3 arrives",
        s,
        r,
        r#"base64 -d < sync/job3.b64 | "$R" queue-write -q q && "$R" queue-ls -q q | cut -c1-20"#,
    );
    let process = r#""$R" queue-process -q q --allow-job-params sh -- -c "$RUN" run"#;
    f.step("process waits for 1", s, r, process);
    f.step(
        "1 arrives",
        s,
        r,
        r#"base64 -d < sync/job1.b64 | "$R" queue-write -q q"#,
    );
    f.step("process runs 1", s, r, process);
    f.step(
        "2 arrives",
        s,
        r,
        r#"base64 -d < sync/job2.b64 | "$R" queue-write -q q"#,
    );
    f.step("process runs 2 and 3", s, r, process);
    f.step(
        "send 4 (fails) and 5",
        s,
        r,
        r#"set -e
        echo "please fail" | "$S" prepare -s seq -i - | base64 > sync/job4.b64
        echo "five" | "$S" prepare -s seq -i - | base64 > sync/job5.b64
        for j in 5 4; do base64 -d < sync/job$j.b64 | "$R" queue-write -q q; done"#,
    );
    f.step("4 fails", s, r, process);
    f.step("4 fails again", s, r, process);
    f.step(
        "fix and rerun",
        s,
        r,
        &format!("touch fixed; {process}; rc=$?; rm fixed; exit $rc"),
    );
    f.step(
        "send 6 (fails) and 7",
        s,
        r,
        r#"set -e
        echo "fail again" | "$S" prepare -s seq -i - | base64 > sync/job6.b64
        echo "seven" | "$S" prepare -s seq -i - | base64 > sync/job7.b64
        for j in 6 7; do base64 -d < sync/job$j.b64 | "$R" queue-write -q q; done"#,
    );
    f.step("6 fails", s, r, process);
    f.step("get next", s, r, r#""$R" queue-get-next -q q"#);
    f.step("skip 6", s, r, r#""$R" queue-set-next -q q 7"#);
    f.step("process runs 7", s, r, process);
    f.step(
        "6 is still there",
        s,
        r,
        r#""$R" queue-info -q q -j 6 | grep -a -e '^FSPL_SEQ=' -e '^FSPL_JOB_QUEUEDIR='"#,
    );
    f.step(
        "timestamp order",
        s,
        r,
        r#"set -e
        "$R" queue-init -q q2
        for n in 8 9 10; do echo "payload $n" | "$S" prepare -s seq -i - -- "$n" > job$n; done
        for n in 10 8 9; do "$R" queue-write -q q2 < job$n; done
        "$R" queue-process -q q2 --order-by timestamp --allow-job-params sh -- -c "$RUN" run
        cat q2/nextseq; ls q2/jobs | wc -l"#,
    );
    f
}

#[test]
fn the_tutorial_flow_behaves_the_same_with_every_pair_of_binaries() {
    let reference = tutorial(Impl::Ref, Impl::Ref);
    let ours = tutorial(Impl::Ours, Impl::Ours);
    assert_eq!(ours.steps, reference.steps);

    // What the contract says should have happened.
    let st = |n| ours.get(n);
    assert_eq!(st("first number").stdout, "1\n");
    assert_eq!(st("send 1-3").stdout, "4\n");
    assert_eq!(
        st("3 arrives").stdout,
        "ID                  \n3                   \n"
    );
    let waits = st("process waits for 1");
    assert_eq!((waits.code, waits.stdout.as_str()), (Some(0), ""));
    assert_eq!(waits.nextseq.as_deref(), Some("1\n"));
    assert_eq!(
        st("process runs 1").stdout,
        "seq=1 queue=q args=[hello][two words] env=alice payload=first payload\n"
    );
    assert_eq!(st("process runs 1").nextseq.as_deref(), Some("2\n"));
    assert_eq!(
        st("process runs 2 and 3").stdout,
        "seq=2 queue=q args=[] env=unset payload=second payload\n\
         seq=3 queue=q args=[3] env=unset payload=third payload\n"
    );
    assert_eq!(st("process runs 2 and 3").jobs_left, 0);
    for name in ["4 fails", "4 fails again"] {
        let s = st(name);
        assert_eq!(s.code, Some(1), "{name}");
        assert_eq!(
            s.stdout,
            "seq=4 queue=q args=[] env=unset payload=please fail\n"
        );
        assert_eq!(s.nextseq.as_deref(), Some("4\n"));
        assert_eq!(s.jobs_left, 2, "4 stays queued and blocks 5");
    }
    let fixed = st("fix and rerun");
    assert_eq!(fixed.code, Some(0));
    assert_eq!(
        fixed.stdout,
        "seq=4 queue=q args=[] env=unset payload=please fail\n\
         seq=5 queue=q args=[] env=unset payload=five\n"
    );
    assert_eq!(fixed.nextseq.as_deref(), Some("6\n"));
    assert_eq!(st("6 fails").code, Some(1));
    assert_eq!(st("get next").stdout, "6\n");
    let skipped = st("process runs 7");
    assert_eq!(skipped.code, Some(0));
    assert_eq!(
        skipped.stdout,
        "seq=7 queue=q args=[] env=unset payload=seven\n"
    );
    assert_eq!(skipped.nextseq.as_deref(), Some("8\n"));
    assert_eq!(skipped.jobs_left, 1, "the skipped job 6 stays, never run");
    assert_eq!(
        st("6 is still there").stdout,
        "FSPL_SEQ=6\nFSPL_JOB_QUEUEDIR=q\n"
    );
    assert_eq!(
        st("timestamp order").stdout,
        "seq=8 queue=q2 args=[8] env=unset payload=payload 8\n\
         seq=9 queue=q2 args=[9] env=unset payload=payload 9\n\
         seq=10 queue=q2 args=[10] env=unset payload=payload 10\n\
         1\n0\n"
    );

    // Mixed pairs: either binary sends, the other receives.
    for (s, r) in [(Impl::Ref, Impl::Ours), (Impl::Ours, Impl::Ref)] {
        let mixed = tutorial(s, r);
        assert_eq!(mixed.steps, ours.steps, "sender {s:?}, receiver {r:?}");
    }
}
