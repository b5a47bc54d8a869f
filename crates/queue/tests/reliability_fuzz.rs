//! Fuzzing the job parser (header, MessagePack metadata, `x-fspl`
//! extension, compressed and encrypted wrappings) in-process: the checked-in
//! corpus (`testdata/fuzz-corpus/`, grown by the coverage-guided AFL++
//! harness `scripts/fuzz`) is replayed, then inputs are mutated
//! (structure-aware, see `fuzz/mutate.rs`) for a time budget on several
//! threads. Every input goes through `fuzz/target.rs`, which asserts the
//! properties; this driver adds what a target cannot see itself:
//!
//! - no panic (caught per input; the input is saved under
//!   `target/fuzz-failures/`);
//! - no hang (a watchdog aborts the test when one input takes longer than
//!   `FSPL_FUZZ_HANG_SECONDS`, default 20, saving it first);
//! - no unbounded allocation (no single allocation above 256 MiB: metadata
//!   is capped at 16 MiB and what it decodes to at 16 MiB, every other
//!   buffer is fixed).
//!
//! Environment:
//! - `FSPL_FUZZ_SECONDS` (default 3, or 600 with `FSPL_RELIABILITY_LONG=1`):
//!   mutation time after the replay.
//! - `FSPL_FUZZ_THREADS` (default 2).
//! - `FSPL_FUZZ_SEED`: the first thread's seed (the default changes per run).
//! - `FSPL_FUZZ_SAVE=1`: also write the seeds and every input that showed a
//!   new kind of behaviour into `testdata/fuzz-corpus/` (to curate the corpus).
//!
//! Each test prints one `RELIABILITY|...` line to stderr.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "fuzz/mutate.rs"]
mod mutate;
#[path = "fuzz/target.rs"]
mod target;

use mutate::{Rng, mutate, seeds};
use target::Target;

// ---- the largest single allocation, per thread ----

struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| {
        if size > l.get() {
            l.set(size)
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; sizes
// are recorded in a const-initialised thread-local, which never allocates.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

const ALLOC_LIMIT: usize = 256 << 20;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
    })
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn corpus_dir() -> PathBuf {
    root().join("testdata/fuzz-corpus")
}

/// The corpus files (AFL's `id:...` names included), sorted.
fn corpus() -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(corpus_dir())
        .expect("testdata/fuzz-corpus/ exists")
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .filter(|(n, _)| !n.starts_with('.') && n != "README.md")
        .collect();
    v.sort();
    v
}

fn save_failure(kind: &str, data: &[u8]) -> PathBuf {
    let dir = root().join("target/fuzz-failures");
    std::fs::create_dir_all(&dir).unwrap();
    let h = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let p = dir.join(format!("{kind}-{h:016x}"));
    std::fs::write(&p, data).unwrap();
    p
}

/// Quiet panics: a caught panic is reported by the driver, with its input.
fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_TARGET.with(|t| t.get()) {
                return default(info);
            }
            let msg = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let loc = info.location().map(|l| l.to_string()).unwrap_or_default();
            LAST_PANIC.with(|p| *p.borrow_mut() = format!("{msg} at {loc}"));
        }));
    });
}

thread_local! {
    static IN_TARGET: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// What went wrong with one input, if anything.
fn run_one(t: &Target, data: &[u8]) -> Result<String, String> {
    LARGEST.with(|l| l.set(0));
    IN_TARGET.with(|f| f.set(true));
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| t.check(data)));
    IN_TARGET.with(|f| f.set(false));
    let largest = LARGEST.with(|l| l.get());
    match r {
        Err(_) => Err(format!(
            "panic: {}",
            LAST_PANIC.with(|p| p.borrow().clone())
        )),
        Ok(_) if largest > ALLOC_LIMIT => Err(format!("allocation of {largest} bytes")),
        Ok(class) => Ok(class),
    }
}

/// Per-thread "started this input at" (ms since `t0`, 0 = idle), for the
/// watchdog.
struct Watch {
    t0: Instant,
    busy_since: Vec<AtomicU64>,
    current: Vec<Mutex<Vec<u8>>>,
    done: AtomicBool,
}

fn watchdog(w: Arc<Watch>, limit: Duration) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !w.done.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(200));
            let now = w.t0.elapsed().as_millis() as u64;
            for (i, b) in w.busy_since.iter().enumerate() {
                let since = b.load(Ordering::SeqCst);
                if since != 0 && now.saturating_sub(since) > limit.as_millis() as u64 {
                    let data = w.current[i].lock().map(|d| d.clone()).unwrap_or_default();
                    let p = save_failure("hang", &data);
                    eprintln!(
                        "fuzz: an input ran for over {} s (hang), saved to {}",
                        limit.as_secs(),
                        p.display()
                    );
                    eprintln!(
                        "RELIABILITY|fuzz_parser_mutation|runs=0|faults=1|states=0|outcome=failed:1"
                    );
                    std::process::abort();
                }
            }
        }
    })
}

#[test]
fn reliability_fuzz_corpus_replay() {
    quiet_panics();
    let t = Target::new();
    if std::env::var_os("FSPL_FUZZ_SAVE").is_some() {
        std::fs::create_dir_all(corpus_dir()).unwrap();
        for (name, data) in seeds() {
            std::fs::write(corpus_dir().join(format!("seed-{name}")), data).unwrap();
        }
    }
    let mut inputs = corpus();
    let n_corpus = inputs.len();
    assert!(n_corpus >= 20, "the fuzz corpus is missing or tiny");
    inputs.extend(seeds());
    let mut failures = Vec::new();
    let mut classes = HashSet::new();
    for (name, data) in &inputs {
        match run_one(&t, data) {
            Ok(c) => {
                classes.insert(c);
            }
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    eprintln!(
        "RELIABILITY|fuzz_corpus_replay|runs={}|faults=0|states={}|outcome={}",
        inputs.len(),
        classes.len(),
        if failures.is_empty() {
            "ok".to_string()
        } else {
            format!("failed:{}", failures.len())
        }
    );
    assert!(
        failures.is_empty(),
        "corpus inputs failed:\n{}",
        failures.join("\n")
    );
    // The corpus must keep reaching deep: decoded jobs of every kind, every
    // codec and age, and the decoder's own refusals.
    let all = classes.iter().cloned().collect::<Vec<_>>().join("\n");
    for want in [
        "plain:NOP",
        "plain:Command",
        "plain:Fail",
        "stream:zstd",
        "stream:gzip",
        "stream:xz",
        "stream:lz4",
        "stream:age",
        "Encrypted",
        "MetadataTooLarge",
        "metadata:",
    ] {
        assert!(all.contains(want), "no corpus input reaches {want:?}");
    }
}

#[test]
fn reliability_fuzz_parser_mutation() {
    quiet_panics();
    let long = std::env::var("FSPL_RELIABILITY_LONG").is_ok_and(|v| !v.is_empty() && v != "0");
    let seconds = env_u64("FSPL_FUZZ_SECONDS").unwrap_or(if long { 600 } else { 3 });
    let threads = env_u64("FSPL_FUZZ_THREADS").unwrap_or(2).max(1) as usize;
    let hang = Duration::from_secs(env_u64("FSPL_FUZZ_HANG_SECONDS").unwrap_or(20));
    let seed = env_u64("FSPL_FUZZ_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    let save = std::env::var_os("FSPL_FUZZ_SAVE").is_some();
    let mut start: Vec<Vec<u8>> = corpus().into_iter().map(|(_, d)| d).collect();
    start.extend(seeds().into_iter().map(|(_, d)| d));
    let pool = Arc::new(Mutex::new(start));
    let classes = Arc::new(Mutex::new(HashSet::<String>::new()));
    let runs = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let w = Arc::new(Watch {
        t0: Instant::now(),
        busy_since: (0..threads).map(|_| AtomicU64::new(0)).collect(),
        current: (0..threads).map(|_| Mutex::new(Vec::new())).collect(),
        done: AtomicBool::new(false),
    });
    let dog = watchdog(w.clone(), hang);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..threads)
        .map(|i| {
            let (pool, classes, runs, failures, w) = (
                pool.clone(),
                classes.clone(),
                runs.clone(),
                failures.clone(),
                w.clone(),
            );
            std::thread::spawn(move || {
                quiet_panics();
                let mut t = Target::new();
                t.verify_every = 8;
                let mut rng = Rng(seed.wrapping_add(i as u64 * 0x9e37_79b9));
                let mut local: Vec<Vec<u8>> = pool.lock().unwrap().clone();
                let mut n = 0u64;
                while Instant::now() < deadline {
                    // Refresh from the shared pool now and then.
                    if n.is_multiple_of(512) {
                        local = pool.lock().unwrap().clone();
                    }
                    let base = &local[rng.below(local.len())];
                    let data = mutate(base, &mut rng, &local);
                    *w.current[i].lock().unwrap() = data.clone();
                    w.busy_since[i].store(w.t0.elapsed().as_millis() as u64 + 1, Ordering::SeqCst);
                    let r = run_one(&t, &data);
                    w.busy_since[i].store(0, Ordering::SeqCst);
                    n += 1;
                    match r {
                        Ok(class) => {
                            let new = classes.lock().unwrap().insert(class.clone());
                            if new {
                                pool.lock().unwrap().push(data.clone());
                                if save {
                                    let h =
                                        data.iter().fold(0u64, |h, &b| h.rotate_left(5) ^ b as u64);
                                    let _ = std::fs::write(
                                        corpus_dir().join(format!("found-{h:016x}")),
                                        &data,
                                    );
                                }
                            }
                        }
                        Err(e) => {
                            let p = save_failure("crash", &data);
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("{e} (input saved to {})", p.display()));
                        }
                    }
                }
                runs.fetch_add(n, Ordering::SeqCst);
            })
        })
        .collect();
    for h in workers {
        h.join().unwrap();
    }
    w.done.store(true, Ordering::SeqCst);
    dog.join().unwrap();
    let failures = failures.lock().unwrap().clone();
    let states = classes.lock().unwrap().len();
    eprintln!(
        "RELIABILITY|fuzz_parser_mutation|runs={}|faults={}|states={}|outcome={}",
        runs.load(Ordering::SeqCst),
        failures.len(),
        states,
        if failures.is_empty() {
            "ok".to_string()
        } else {
            format!("failed:{}", failures.len())
        }
    );
    assert!(
        failures.is_empty(),
        "seed {seed}: {} inputs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
