//! Property tests of the job header codec: round trips over the whole value
//! space, slice and stream decoding agreeing, robustness against arbitrary
//! and corrupted input (no panics, no allocation driven by stored lengths,
//! every single-bit error caught), and tolerance of what other writers may
//! legitimately produce (unknown top-level keys, wider integer encodings,
//! `bin`/`str` byte strings), and fspl's own `x-fspl` extension round-tripping.
//!
//! The MessagePack in the tolerance tests is encoded by hand here, so the
//! tests do not depend on the encoder under test; `hand_encoding_in_compact_
//! mode_is_byte_identical_to_encode` checks the hand encoder itself.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use fspl_format::{
    CmdType, Command, Ctime, Digest, DigestAlg, EXTENSION_KEY, Extension, HeaderError, JobHeader,
    MAGIC, MAX_DECODED_SIZE, MAX_METADATA_DEPTH, MAX_METADATA_LEN, PREFIX_LEN, decode,
    parse_prefix, read_header,
};
use proptest::prelude::*;
use proptest::test_runner::Config;

// ---------------------------------------------------------------------------
// Allocation tracking: the largest single allocation made on this thread.
// ---------------------------------------------------------------------------

struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    /// Bytes allocated and not yet freed by this thread, and the most
    /// there were since the last `peak_allocation` began.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| {
        if size > l.get() {
            l.set(size)
        }
    });
}

fn live(delta: isize) {
    let _ = LIVE.try_with(|l| {
        let now = l.get() + delta;
        l.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; we only
// record sizes in a const-initialised thread-local (which never allocates).
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        live(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        live(layout.size() as isize);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        live(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        live(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

/// Run `f` and return its result with the largest single allocation it made.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    let out = f();
    (out, LARGEST.with(|l| l.get()))
}

/// Run `f` and return its result with the most memory it had allocated
/// (and not freed) at any one time on this thread, beyond what was live
/// when it started. Memory still held by the result counts.
fn peak_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(|l| l.get());
    PEAK.with(|p| p.set(base));
    let out = f();
    (out, (PEAK.with(|p| p.get()) - base).max(0) as usize)
}

/// No decode of a tiny input may allocate more than this.
const ALLOC_BOUND: usize = 1 << 20;

// ---------------------------------------------------------------------------
// Strategies.
// ---------------------------------------------------------------------------

/// Byte strings: mostly short, with the interesting bytes over-represented,
/// sometimes long, rarely straddling the 65535-element array16/array32 edge.
fn byte_string() -> impl Strategy<Value = Vec<u8>> + Clone {
    let special = prop_oneof![Just(0u8), Just(0x7f), Just(0x80), Just(0xff), any::<u8>()];
    prop_oneof![
        40 => prop::collection::vec(special, 0..12),
        20 => prop::collection::vec(any::<u8>(), 0..300),
        2 => prop::collection::vec(any::<u8>(), 1000..5000),
        1 => prop::collection::vec(any::<u8>(), 65530..65540),
    ]
}

fn small_byte_string() -> impl Strategy<Value = Vec<u8>> + Clone {
    prop::collection::vec(prop_oneof![Just(0u8), Just(0xff), any::<u8>()], 0..8)
}

fn ctime() -> impl Strategy<Value = Ctime> {
    prop_oneof![
        (any::<i64>(), any::<u32>()).prop_map(|(secs, nanos)| Ctime { secs, nanos }),
        (
            prop_oneof![Just(0i64), Just(-1), Just(i64::MIN), Just(i64::MAX)],
            prop_oneof![Just(0u32), Just(999_999_999), Just(u32::MAX)]
        )
            .prop_map(|(secs, nanos)| Ctime { secs, nanos }),
    ]
}

fn seq() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        0u64..300,
        prop_oneof![
            Just(0u64),
            Just(127),
            Just(128),
            Just(255),
            Just(256),
            Just(65535),
            Just(65536),
            Just(u32::MAX as u64),
            Just(u32::MAX as u64 + 1),
            Just(i64::MAX as u64),
            Just(i64::MAX as u64 + 1),
            Just(u64::MAX)
        ],
    ]
}

fn header_with(bytes: impl Strategy<Value = Vec<u8>> + Clone) -> impl Strategy<Value = JobHeader> {
    let cmd = prop_oneof![
        1 => Just(CmdType::Nop),
        1 => Just(CmdType::Fail),
        4 => (
            prop::collection::vec(bytes.clone(), 0..5),
            prop::collection::vec((bytes.clone(), bytes), 0..5)
        )
            .prop_map(|(params, env)| CmdType::Command(Command { params, env })),
    ];
    (seq(), ctime(), cmd).prop_map(|(seq, ctime, cmd_type)| JobHeader {
        seq,
        ctime,
        cmd_type,
    })
}

fn header() -> impl Strategy<Value = JobHeader> {
    header_with(byte_string())
}

/// Headers small enough to try every single-bit flip of.
fn small_header() -> impl Strategy<Value = JobHeader> {
    header_with(small_byte_string())
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        prop::collection::vec(any::<u8>(), 0..64),
        // A payload that itself looks like a job header must not confuse us.
        Just(
            JobHeader {
                seq: 1,
                ctime: Ctime { secs: 0, nanos: 0 },
                cmd_type: CmdType::Nop
            }
            .encode()
            .unwrap()
        ),
    ]
}

// ---------------------------------------------------------------------------
// A hand-written MessagePack encoder with selectable widths.
// ---------------------------------------------------------------------------

/// Which of several valid encodings to use at each choice point: index 0 is
/// always the most compact (what Filespooler writes); `compact` forces it.
struct Choices {
    bytes: Vec<u8>,
    at: usize,
    compact: bool,
}

impl Choices {
    fn new(bytes: Vec<u8>) -> Choices {
        Choices {
            bytes,
            at: 0,
            compact: false,
        }
    }

    fn compact() -> Choices {
        Choices {
            bytes: Vec::new(),
            at: 0,
            compact: true,
        }
    }

    fn pick(&mut self, n: usize) -> usize {
        if self.compact || self.bytes.is_empty() || n <= 1 {
            return 0;
        }
        let b = self.bytes[self.at % self.bytes.len()];
        self.at += 1;
        b as usize % n
    }
}

fn enc_uint(out: &mut Vec<u8>, v: u64, c: &mut Choices) {
    // Every marker that can hold v, most compact first.
    let mut forms: Vec<u8> = Vec::new();
    if v < 128 {
        forms.push(0x00);
    }
    if v <= u8::MAX as u64 {
        forms.push(0xcc);
    }
    if v <= u16::MAX as u64 {
        forms.push(0xcd);
    }
    if v <= u32::MAX as u64 {
        forms.push(0xce);
    }
    forms.push(0xcf);
    // Signed markers with a non-negative value are valid too.
    if v <= i8::MAX as u64 {
        forms.push(0xd0);
    }
    if v <= i16::MAX as u64 {
        forms.push(0xd1);
    }
    if v <= i32::MAX as u64 {
        forms.push(0xd2);
    }
    if v <= i64::MAX as u64 {
        forms.push(0xd3);
    }
    put_int(out, forms[c.pick(forms.len())], v as i128);
}

fn enc_int(out: &mut Vec<u8>, v: i64, c: &mut Choices) {
    if v >= 0 {
        return enc_uint(out, v as u64, c);
    }
    let mut forms: Vec<u8> = Vec::new();
    if v >= -32 {
        forms.push(0xe0);
    }
    if v >= i8::MIN as i64 {
        forms.push(0xd0);
    }
    if v >= i16::MIN as i64 {
        forms.push(0xd1);
    }
    if v >= i32::MIN as i64 {
        forms.push(0xd2);
    }
    forms.push(0xd3);
    put_int(out, forms[c.pick(forms.len())], v as i128);
}

fn put_int(out: &mut Vec<u8>, marker: u8, v: i128) {
    match marker {
        0x00 => out.push(v as u8),
        0xe0 => out.push(v as i8 as u8),
        0xcc => out.extend([0xcc, v as u8]),
        0xcd => {
            out.push(0xcd);
            out.extend((v as u16).to_be_bytes())
        }
        0xce => {
            out.push(0xce);
            out.extend((v as u32).to_be_bytes())
        }
        0xcf => {
            out.push(0xcf);
            out.extend((v as u64).to_be_bytes())
        }
        0xd0 => out.extend([0xd0, v as i8 as u8]),
        0xd1 => {
            out.push(0xd1);
            out.extend((v as i16).to_be_bytes())
        }
        0xd2 => {
            out.push(0xd2);
            out.extend((v as i32).to_be_bytes())
        }
        0xd3 => {
            out.push(0xd3);
            out.extend((v as i64).to_be_bytes())
        }
        _ => unreachable!(),
    }
}

/// A length-prefixed container or string header: `fix` is the fix-form base
/// (None when there is none), `fix_max` its largest length, then the 8-, 16-
/// and 32-bit markers (0 = that width does not exist for this type).
fn enc_len(out: &mut Vec<u8>, n: usize, fix: Option<(u8, usize)>, wide: [u8; 3], c: &mut Choices) {
    let mut forms: Vec<(u8, usize)> = Vec::new(); // (marker, length bytes)
    if let Some((base, max)) = fix
        && n <= max
    {
        forms.push((base, 0));
    }
    if wide[0] != 0 && n <= u8::MAX as usize {
        forms.push((wide[0], 1));
    }
    if n <= u16::MAX as usize {
        forms.push((wide[1], 2));
    }
    forms.push((wide[2], 4));
    let (marker, width) = forms[c.pick(forms.len())];
    match width {
        0 => out.push(marker | n as u8),
        1 => out.extend([marker, n as u8]),
        2 => {
            out.push(marker);
            out.extend((n as u16).to_be_bytes())
        }
        _ => {
            out.push(marker);
            out.extend((n as u32).to_be_bytes())
        }
    }
}

fn enc_array_len(out: &mut Vec<u8>, n: usize, c: &mut Choices) {
    enc_len(out, n, Some((0x90, 15)), [0, 0xdc, 0xdd], c)
}

fn enc_map_len(out: &mut Vec<u8>, n: usize, c: &mut Choices) {
    enc_len(out, n, Some((0x80, 15)), [0, 0xde, 0xdf], c)
}

fn enc_str(out: &mut Vec<u8>, s: &[u8], c: &mut Choices) {
    enc_len(out, s.len(), Some((0xa0, 31)), [0xd9, 0xda, 0xdb], c);
    out.extend_from_slice(s);
}

fn enc_bin(out: &mut Vec<u8>, s: &[u8], c: &mut Choices) {
    enc_len(out, s.len(), None, [0xc4, 0xc5, 0xc6], c);
    out.extend_from_slice(s);
}

/// A byte string: an array of integers (what Filespooler writes), or `bin`,
/// or `str` when it is valid UTF-8.
fn enc_bytes(out: &mut Vec<u8>, s: &[u8], c: &mut Choices) {
    let forms = if std::str::from_utf8(s).is_ok() { 3 } else { 2 };
    match c.pick(forms) {
        0 => {
            enc_array_len(out, s.len(), c);
            for &b in s {
                enc_uint(out, b as u64, c);
            }
        }
        1 => enc_bin(out, s, c),
        _ => enc_str(out, s, c),
    }
}

/// Any MessagePack value, for the extra keys a newer writer might add.
#[derive(Clone, Debug)]
enum Value {
    Nil,
    Bool(bool),
    UInt(u64),
    Int(i64),
    F32(f32),
    F64(f64),
    Str(String),
    Bin(Vec<u8>),
    Ext(i8, Vec<u8>),
    Array(Vec<Value>),
    Map(Vec<(Value, Value)>),
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Nil),
        any::<bool>().prop_map(Value::Bool),
        any::<u64>().prop_map(Value::UInt),
        any::<i64>().prop_map(Value::Int),
        any::<f32>().prop_map(Value::F32),
        any::<f64>().prop_map(Value::F64),
        ".{0,40}".prop_map(Value::Str),
        prop::collection::vec(any::<u8>(), 0..300).prop_map(Value::Bin),
        (any::<i8>(), prop::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(t, d)| Value::Ext(t, d)),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((inner.clone(), inner), 0..4).prop_map(Value::Map),
        ]
    })
}

fn enc_value(out: &mut Vec<u8>, v: &Value, c: &mut Choices) {
    match v {
        Value::Nil => out.push(0xc0),
        Value::Bool(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
        Value::UInt(u) => enc_uint(out, *u, c),
        Value::Int(i) => enc_int(out, *i, c),
        Value::F32(f) => {
            out.push(0xca);
            out.extend(f.to_be_bytes())
        }
        Value::F64(f) => {
            out.push(0xcb);
            out.extend(f.to_be_bytes())
        }
        Value::Str(s) => enc_str(out, s.as_bytes(), c),
        Value::Bin(b) => enc_bin(out, b, c),
        Value::Ext(tag, data) => {
            let fixed = match data.len() {
                1 => Some(0xd4),
                2 => Some(0xd5),
                4 => Some(0xd6),
                8 => Some(0xd7),
                16 => Some(0xd8),
                _ => None,
            };
            match fixed {
                Some(m) if c.pick(2) == 0 => out.push(m),
                _ => enc_len(out, data.len(), None, [0xc7, 0xc8, 0xc9], c),
            }
            out.push(*tag as u8);
            out.extend_from_slice(data);
        }
        Value::Array(items) => {
            enc_array_len(out, items.len(), c);
            for i in items {
                enc_value(out, i, c);
            }
        }
        Value::Map(entries) => {
            enc_map_len(out, entries.len(), c);
            for (k, v) in entries {
                enc_value(out, k, c);
                enc_value(out, v, c);
            }
        }
    }
}

/// The metadata map of `h`, with `extras` inserted before the known entry
/// with the given index (3 = at the end).
fn enc_metadata(h: &JobHeader, extras: &[(usize, String, Value)], c: &mut Choices) -> Vec<u8> {
    let mut out = Vec::new();
    enc_map_len(&mut out, 3 + extras.len(), c);
    let extras_at = |out: &mut Vec<u8>, pos: usize, c: &mut Choices| {
        for (p, k, v) in extras {
            if (*p).min(3) == pos {
                enc_str(out, k.as_bytes(), c);
                enc_value(out, v, c);
            }
        }
    };
    extras_at(&mut out, 0, c);
    enc_str(&mut out, b"seq", c);
    enc_uint(&mut out, h.seq, c);
    extras_at(&mut out, 1, c);
    enc_str(&mut out, b"ctime", c);
    enc_array_len(&mut out, 2, c);
    enc_int(&mut out, h.ctime.secs, c);
    enc_uint(&mut out, h.ctime.nanos as u64, c);
    extras_at(&mut out, 2, c);
    enc_str(&mut out, b"cmd_type", c);
    match &h.cmd_type {
        CmdType::Nop => enc_str(&mut out, b"NOP", c),
        CmdType::Fail => enc_str(&mut out, b"Fail", c),
        CmdType::Command(cmd) => {
            enc_map_len(&mut out, 1, c);
            enc_str(&mut out, b"Command", c);
            enc_map_len(&mut out, 2, c);
            let params = |out: &mut Vec<u8>, c: &mut Choices| {
                enc_str(out, b"params", c);
                enc_array_len(out, cmd.params.len(), c);
                for p in &cmd.params {
                    enc_bytes(out, p, c);
                }
            };
            let env = |out: &mut Vec<u8>, c: &mut Choices| {
                enc_str(out, b"env", c);
                enc_array_len(out, cmd.env.len(), c);
                for (k, v) in &cmd.env {
                    enc_array_len(out, 2, c);
                    enc_bytes(out, k, c);
                    enc_bytes(out, v, c);
                }
            };
            // Field order inside the struct variant does not matter to a reader.
            if c.pick(2) == 0 {
                params(&mut out, c);
                env(&mut out, c);
            } else {
                env(&mut out, c);
                params(&mut out, c);
            }
        }
    }
    extras_at(&mut out, 3, c);
    out
}

/// A complete header around `meta`: prefix with both CRCs right.
fn frame(meta: &[u8]) -> Vec<u8> {
    frame_with_len(meta, meta.len() as u64)
}

/// A header whose prefix claims `len` metadata bytes (CRCs computed over
/// what is given), followed by `meta`.
fn frame_with_len(meta: &[u8], len: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREFIX_LEN + meta.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(meta).to_be_bytes());
    let c = crc32fast::hash(&out[..26]);
    out.extend_from_slice(&c.to_be_bytes());
    out.extend_from_slice(meta);
    out
}

/// Decode with both entry points; they must agree, and the stream must be
/// left exactly at the payload. Returns the slice decoder's answer.
fn decode_both(bytes: &[u8]) -> Result<(JobHeader, u64), String> {
    let slice = decode(bytes);
    let mut r = bytes;
    let stream = read_header(&mut r);
    match (&slice, &stream) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b, "slice and stream decoders disagree");
            assert_eq!(
                r.len() as u64,
                bytes.len() as u64 - a.header_len,
                "stream decoder did not stop at the payload"
            );
        }
        (Err(a), Err(b)) => assert_eq!(
            a.to_string(),
            b.to_string(),
            "slice and stream decoders refuse for different reasons"
        ),
        _ => panic!("slice decoder says {slice:?}, stream decoder says {stream:?}"),
    }
    slice
        .map(|d| (d.header, d.header_len))
        .map_err(|e| e.to_string())
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------
// Round trips.
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn encode_then_decode_is_the_identity_and_stops_at_the_payload(
        h in header(),
        payload in payload(),
    ) {
        let enc = h.encode().unwrap();
        let mut file = enc.clone();
        file.extend_from_slice(&payload);
        let (got, len) = decode_both(&file).unwrap();
        prop_assert_eq!(&got, &h);
        prop_assert_eq!(len, enc.len() as u64);
        prop_assert_eq!(&file[len as usize..], &payload[..]);
        // Re-encoding what was decoded gives the same bytes.
        prop_assert_eq!(got.encode().unwrap(), enc);
    }

    #[test]
    fn hand_encoding_in_compact_mode_is_byte_identical_to_encode(h in header()) {
        // Validates the test's own encoder: its choice 0 is what we (and
        // Filespooler) write.
        let meta = enc_metadata(&h, &[], &mut Choices::compact());
        prop_assert_eq!(frame(&meta), h.encode().unwrap());
    }
}

// ---------------------------------------------------------------------------
// Arbitrary input never panics.
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = parse_prefix(&bytes);
        let _ = decode_both(&bytes);
    }

    #[test]
    fn random_bytes_after_a_valid_magic_never_panic(
        rest in prop::collection::vec(any::<u8>(), 0..200),
        version_ok in any::<bool>(),
    ) {
        let mut bytes = MAGIC.to_vec();
        if version_ok {
            bytes.extend_from_slice(&1u16.to_be_bytes());
        }
        bytes.extend_from_slice(&rest);
        let _ = parse_prefix(&bytes);
        let _ = decode_both(&bytes);
    }

    #[test]
    fn random_metadata_with_valid_checksums_never_panics(
        meta in prop::collection::vec(any::<u8>(), 0..200),
        payload in prop::collection::vec(any::<u8>(), 0..20),
    ) {
        // Past both CRCs, so the MessagePack decoder itself is exercised.
        let mut file = frame(&meta);
        file.extend_from_slice(&payload);
        let (r, largest) = largest_allocation(|| decode_both(&file));
        prop_assert!(largest < ALLOC_BOUND, "allocated {largest} bytes");
        if let Ok((_, len)) = r {
            prop_assert_eq!(len, (PREFIX_LEN + meta.len()) as u64);
        }
    }

    #[test]
    fn random_metadata_starting_like_a_job_map_never_panics(
        h in small_header(),
        cut in any::<prop::sample::Index>(),
        tail in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        // A valid map cut short and continued with garbage: reaches deep
        // into the struct and enum decoding before going wrong.
        let good = enc_metadata(&h, &[], &mut Choices::compact());
        let mut meta = good[..cut.index(good.len() + 1)].to_vec();
        meta.extend_from_slice(&tail);
        let _ = decode_both(&frame(&meta));
    }
}

// ---------------------------------------------------------------------------
// Corruption.
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Edit {
    FlipBit(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Delete(prop::sample::Index),
    Overwrite(prop::sample::Index, u8),
    Truncate(prop::sample::Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<prop::sample::Index>(), 0u8..8).prop_map(|(i, b)| Edit::FlipBit(i, b)),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<prop::sample::Index>().prop_map(Edit::Delete),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Overwrite(i, b)),
        any::<prop::sample::Index>().prop_map(Edit::Truncate),
    ]
}

fn apply(bytes: &mut Vec<u8>, e: &Edit) {
    let n = bytes.len();
    match e {
        Edit::FlipBit(i, b) if n > 0 => bytes[i.index(n)] ^= 1 << b,
        Edit::Insert(i, b) => bytes.insert(i.index(n + 1), *b),
        Edit::Delete(i) if n > 0 => {
            bytes.remove(i.index(n));
        }
        Edit::Overwrite(i, b) if n > 0 => bytes[i.index(n)] = *b,
        Edit::Truncate(i) => bytes.truncate(i.index(n + 1)),
        _ => {}
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn random_edits_never_panic_and_edits_past_the_header_change_nothing(
        h in small_header(),
        payload in prop::collection::vec(any::<u8>(), 0..32),
        edits in prop::collection::vec(edit(), 1..4),
    ) {
        let enc = h.encode().unwrap();
        let mut file = enc.clone();
        file.extend_from_slice(&payload);
        for e in &edits {
            apply(&mut file, e);
        }
        let r = decode_both(&file);
        if file.len() >= enc.len() && file[..enc.len()] == enc[..] {
            // The checked bytes are intact (the edits hit only the payload,
            // or cancelled out): the same header must come back.
            let (got, len) = r.unwrap();
            prop_assert_eq!(got, h);
            prop_assert_eq!(len, enc.len() as u64);
        } else if file.len() < enc.len() && enc.starts_with(&file) {
            // A plain truncation of the header: always refused as one.
            prop_assert!(r.is_err());
        }
        // Anything else must merely not panic (done) and be either refused
        // or decoded; a multi-byte change can in principle collide with a
        // CRC-32 (probability 2^-32), so it is not asserted to be refused.
    }

    #[test]
    fn every_single_bit_flip_in_the_checked_bytes_is_rejected(
        h in small_header(),
        payload in prop::collection::vec(any::<u8>(), 0..8),
    ) {
        let enc = h.encode().unwrap();
        let mut file = enc.clone();
        file.extend_from_slice(&payload);
        // Bytes 0..30+N are all covered: the magic and version by their
        // checks, bytes 0..26 by the prefix CRC, 26..30 are that CRC, and
        // the metadata by its CRC. CRC-32 catches every single-bit error.
        for byte in 0..enc.len() {
            for bit in 0..8 {
                file[byte] ^= 1 << bit;
                let r = decode_both(&file);
                prop_assert!(r.is_err(), "flip of bit {bit} of byte {byte} went unnoticed: {r:?}");
                file[byte] ^= 1 << bit;
            }
        }
        // Flips in the payload are not checked (the format has no payload CRC).
        for byte in enc.len()..file.len() {
            file[byte] ^= 0x01;
            prop_assert_eq!(decode_both(&file).unwrap().0, h.clone());
            file[byte] ^= 0x01;
        }
    }

    #[test]
    fn a_burst_of_up_to_32_bits_inside_one_checked_region_is_rejected(
        h in small_header(),
        region in 0usize..3,
        at in any::<prop::sample::Index>(),
        len in 1usize..=4,
        xor in prop::collection::vec(any::<u8>(), 4),
    ) {
        // CRC-32 detects every error burst no longer than 32 bits, so any
        // change within 4 consecutive bytes of one CRC-covered range is
        // caught: [0, 26) by the prefix CRC, [26, 30) is that CRC, and
        // [30, 30+N) by the metadata CRC.
        let enc = h.encode().unwrap();
        let (lo, hi) = [(0, 26), (26, 30), (30, enc.len())][region];
        prop_assume!(hi > lo);
        let len = len.min(hi - lo);
        let start = lo + at.index(hi - lo - len + 1);
        let mut file = enc.clone();
        let mut changed = false;
        for k in 0..len {
            file[start + k] ^= xor[k];
            changed |= xor[k] != 0;
        }
        prop_assume!(changed);
        prop_assert!(decode_both(&file).is_err());
    }

    #[test]
    fn every_truncation_of_a_header_is_refused_as_a_truncation(h in small_header()) {
        let enc = h.encode().unwrap();
        for cut in 0..enc.len() {
            let slice = decode(&enc[..cut]);
            let mut r = &enc[..cut];
            let stream = read_header(&mut r);
            for e in [slice.unwrap_err(), stream.unwrap_err()] {
                prop_assert!(e.is_truncation(), "cut at {cut}: {e}");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Stored lengths never drive allocation.
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn a_metadata_length_above_the_limit_is_refused_without_allocating(
        len in prop_oneof![
            Just(MAX_METADATA_LEN + 1),
            Just(u64::MAX),
            Just(1u64 << 63),
            (MAX_METADATA_LEN + 1)..=u64::MAX,
        ],
        meta in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let file = frame_with_len(&meta, len);
        let (r, largest) = largest_allocation(|| (decode(&file), read_header(&mut &file[..])));
        prop_assert!(largest < ALLOC_BOUND, "allocated {largest} bytes");
        prop_assert!(matches!(r.0, Err(HeaderError::MetadataTooLarge(l)) if l == len));
        prop_assert!(matches!(r.1, Err(HeaderError::MetadataTooLarge(l)) if l == len));
        prop_assert!(matches!(parse_prefix(&file), Err(HeaderError::MetadataTooLarge(_))));
    }

    #[test]
    fn a_metadata_length_within_the_limit_on_a_short_input_does_not_preallocate(
        len in prop_oneof![Just(MAX_METADATA_LEN), (1u64 << 20)..=MAX_METADATA_LEN],
        meta in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let file = frame_with_len(&meta, len);
        let (r, largest) = largest_allocation(|| (decode(&file), read_header(&mut &file[..])));
        prop_assert!(largest < ALLOC_BOUND, "allocated {largest} bytes");
        for e in [r.0.unwrap_err(), r.1.unwrap_err()] {
            prop_assert!(
                matches!(e, HeaderError::TruncatedMetadata { expected, .. } if expected == len),
                "{e}"
            );
        }
    }

    #[test]
    fn huge_messagepack_lengths_inside_valid_checksums_do_not_allocate(
        h in small_header(),
        which in 0usize..6,
        claimed in prop_oneof![Just(u32::MAX), (1u32 << 20)..=u32::MAX],
    ) {
        // The metadata is short but announces an enormous array, map, string
        // or bin somewhere; the decoder must fail on the missing data, not
        // reserve memory for it.
        let mut meta = Vec::new();
        let big = |out: &mut Vec<u8>, marker: u8| {
            out.push(marker);
            out.extend(claimed.to_be_bytes());
        };
        let mut c = Choices::compact();
        enc_map_len(&mut meta, 4, &mut c);
        enc_str(&mut meta, b"seq", &mut c);
        enc_uint(&mut meta, h.seq, &mut c);
        enc_str(&mut meta, b"ctime", &mut c);
        enc_array_len(&mut meta, 2, &mut c);
        enc_int(&mut meta, h.ctime.secs, &mut c);
        enc_uint(&mut meta, h.ctime.nanos as u64, &mut c);
        match which {
            // Inside the command: params array, one param, env array.
            0..=2 => {
                enc_str(&mut meta, b"cmd_type", &mut c);
                enc_map_len(&mut meta, 1, &mut c);
                enc_str(&mut meta, b"Command", &mut c);
                enc_map_len(&mut meta, 2, &mut c);
                enc_str(&mut meta, b"params", &mut c);
                match which {
                    0 => big(&mut meta, 0xdd),
                    1 => {
                        enc_array_len(&mut meta, 1, &mut c);
                        big(&mut meta, 0xdd);
                    }
                    _ => {
                        enc_array_len(&mut meta, 0, &mut c);
                        enc_str(&mut meta, b"env", &mut c);
                        big(&mut meta, 0xdd);
                    }
                }
            }
            // An unknown key whose value is a huge str, bin or map.
            n => {
                enc_str(&mut meta, b"cmd_type", &mut c);
                enc_str(&mut meta, b"NOP", &mut c);
                enc_str(&mut meta, b"extension", &mut c);
                big(&mut meta, [0xdb, 0xc6, 0xdf][n - 3]);
            }
        }
        meta.extend_from_slice(&[0x01, 0x02, 0x03]);
        let file = frame(&meta);
        let (r, largest) = largest_allocation(|| decode_both(&file));
        prop_assert!(largest < ALLOC_BOUND, "allocated {largest} bytes");
        prop_assert!(r.is_err());
    }
}

// ---------------------------------------------------------------------------
// What other writers may legitimately produce.
// ---------------------------------------------------------------------------

fn extra_key() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z_]{0,12}",
        ".{0,40}",
        // Near misses of the real names.
        prop_oneof![
            Just("Seq".to_string()),
            Just("seq ".to_string()),
            Just("ctime_ns".to_string()),
            Just("cmd".to_string()),
            Just("Command".to_string()),
            Just("NOP".to_string()),
            Just("payload_sha256".to_string()),
            Just("x".repeat(300)),
        ],
    ]
    .prop_filter("not a known key", |k| {
        !matches!(k.as_str(), "seq" | "ctime" | "cmd_type") && k != EXTENSION_KEY
    })
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn unknown_top_level_keys_are_ignored(
        h in small_header(),
        extras in prop::collection::vec((0usize..4, extra_key(), value()), 1..5),
        choices in prop::collection::vec(any::<u8>(), 0..64),
        payload in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let meta = enc_metadata(&h, &extras, &mut Choices::new(choices));
        let mut file = frame(&meta);
        let header_len = file.len() as u64;
        file.extend_from_slice(&payload);
        let (got, len) = decode_both(&file).map_err(|e| {
            TestCaseError::fail(format!("refused a job with extra keys: {e}"))
        })?;
        prop_assert_eq!(got, h);
        prop_assert_eq!(len, header_len);
    }

    #[test]
    fn wider_integers_and_bin_or_str_byte_strings_are_accepted(
        h in small_header(),
        choices in prop::collection::vec(any::<u8>(), 1..64),
    ) {
        let meta = enc_metadata(&h, &[], &mut Choices::new(choices));
        let (got, _) = decode_both(&frame(&meta)).map_err(|e| {
            TestCaseError::fail(format!("refused an alternative encoding: {e}"))
        })?;
        prop_assert_eq!(got, h);
    }
}

fn extension() -> impl Strategy<Value = Extension> {
    let digest = (
        prop_oneof![Just(DigestAlg::Blake3), Just(DigestAlg::Sha256)],
        any::<[u8; 32]>(),
    )
        .prop_map(|(alg, bytes)| Digest { alg, bytes });
    let signature = prop::collection::vec(any::<u8>(), 64)
        .prop_map(|v| <[u8; 64]>::try_from(v.as_slice()).unwrap());
    (
        prop::option::of(any::<u64>()),
        prop::option::of(digest),
        prop::option::of(".{0,30}"),
        prop::option::of(any::<[u8; 32]>()),
        prop::option::of(signature),
    )
        .prop_map(|(payload_len, digest, to, signer, signature)| Extension {
            payload_len,
            digest,
            to,
            signer,
            signature,
        })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn fspl_extension_metadata_round_trips_and_leaves_the_header_alone(
        h in small_header(),
        ext in extension(),
        payload in payload(),
    ) {
        let enc = h.encode_with(&ext).unwrap();
        let mut file = enc.clone();
        file.extend_from_slice(&payload);
        let d = decode(&file).unwrap();
        let mut r = &file[..];
        prop_assert_eq!(&read_header(&mut r).unwrap(), &d);
        prop_assert_eq!(r, &payload[..]);
        prop_assert_eq!(&d.header, &h);
        prop_assert_eq!(&d.ext, &ext);
        prop_assert_eq!(d.header_len, enc.len() as u64);
        if ext.is_empty() {
            // No extension: exactly Filespooler's bytes.
            prop_assert_eq!(enc, h.encode().unwrap());
        }
    }

    #[test]
    fn a_signature_covers_everything_but_itself(
        h in small_header(),
        ext in extension(),
        key in any::<[u8; 32]>(),
    ) {
        // A signed job always carries its signer's key (so x-fspl is never
        // empty once the signature is removed).
        let mut ext = ext;
        ext.signer = Some(key);
        let base = h.signed_bytes(&ext).unwrap();
        let mut unsigned = ext.clone();
        unsigned.signature = None;
        prop_assert_eq!(&base, &h.signed_bytes(&unsigned).unwrap());
        let mut other = h.clone();
        other.seq = other.seq.wrapping_add(1);
        prop_assert_ne!(&base, &other.signed_bytes(&ext).unwrap());
        let mut e = ext.clone();
        e.payload_len = Some(e.payload_len.map_or(0, |l| l.wrapping_add(1)));
        prop_assert_ne!(&base, &h.signed_bytes(&e).unwrap());
        let mut e = ext.clone();
        e.to = Some(format!("{}x", e.to.unwrap_or_default()));
        prop_assert_ne!(&base, &h.signed_bytes(&e).unwrap());
        let mut e = ext.clone();
        e.signer = Some(key.map(|b| b ^ 1));
        prop_assert_ne!(&base, &h.signed_bytes(&e).unwrap());
    }
}

#[test]
fn small_seq_in_a_u64_marker_decodes() {
    // The FORMAT.md example of "any integer width": seq 1 as 0xcf + 8 bytes.
    let h = JobHeader {
        seq: 1,
        ctime: Ctime { secs: 5, nanos: 6 },
        cmd_type: CmdType::Nop,
    };
    let mut meta = Vec::new();
    meta.push(0x83);
    meta.extend(b"\xa3seq\xcf\0\0\0\0\0\0\0\x01");
    meta.extend(b"\xa5ctime\x92\xd3\0\0\0\0\0\0\0\x05\xce\0\0\0\x06");
    meta.extend(b"\xa8cmd_type\xa3NOP");
    assert_eq!(decode_both(&frame(&meta)).unwrap().0, h);
}

/// Regression: metadata nested ~1000 deep inside an extension value (valid
/// CRCs, so any sender can make one) overflowed the stack of a 2 MiB thread
/// in a debug build and aborted the process, because rmp-serde's default
/// depth limit is 1024. Now nesting beyond MAX_METADATA_DEPTH is refused.
#[test]
fn deep_nesting_in_an_extension_value_overflowed_the_stack() {
    for depth in [
        1usize, 10, 100, 120, 127, 128, 500, 1000, 1023, 1024, 1025, 5000, 100_000,
    ] {
        let mut meta = vec![0x84];
        meta.extend(b"\xa3seq\x01\xa5ctime\x92\x00\x00\xa8cmd_type\xa3NOP");
        meta.extend(b"\xa1x");
        meta.extend(std::iter::repeat_n(0x91u8, depth));
        meta.push(0xc0);
        let file = frame(&meta);
        // 2 MiB: the default stack of a spawned thread (the CLI's main
        // thread has 8 MiB, but a daemon or a test thread has this).
        let r = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || decode_both(&file))
            .unwrap()
            .join()
            .unwrap();
        // With the top-level map, depth + 1 containers are open at the
        // innermost point; rmp-serde refuses when that reaches the limit.
        if depth + 1 < MAX_METADATA_DEPTH {
            assert_eq!(r.map(|h| h.0.seq), Ok(1), "depth {depth}");
        } else {
            let e = r.unwrap_err();
            assert!(e.contains("invalid metadata"), "depth {depth}: {e}");
        }
    }
}

// ---------------------------------------------------------------------------
// Decoding stays within its memory budget, however the metadata is made.
// ---------------------------------------------------------------------------

/// Allocations a decode may make beyond what the budget counts (none were
/// seen; this is room for an error message).
const BUDGET_SLACK: usize = 16 * 1024;

/// A Command header's metadata: `n_empty` empty params, `n_short` params
/// of `short_len` bytes, one param announcing `lying` elements but holding
/// none (when given), `n_env` empty env pairs, a `to` of `to_len` bytes
/// and an unknown key holding `pad` bytes of str.
fn hostile_metadata(
    n_empty: usize,
    n_short: usize,
    short_len: usize,
    lying: Option<u32>,
    n_env: usize,
    to_len: usize,
    pad: usize,
) -> Vec<u8> {
    let mut m = vec![0x85];
    m.extend(b"\xa3seq\x01\xa5ctime\x92\x00\x00");
    m.extend(b"\xa8cmd_type\x81\xa7Command\x82\xa6params\xdd");
    let n_params = n_empty + n_short + usize::from(lying.is_some());
    m.extend((n_params as u32).to_be_bytes());
    m.extend(std::iter::repeat_n(0x90u8, n_empty));
    for i in 0..n_short {
        m.push(0xdc);
        m.extend((short_len as u16).to_be_bytes());
        m.extend(std::iter::repeat_n((i % 128) as u8, short_len));
    }
    if let Some(claimed) = lying {
        m.push(0xdd);
        m.extend(claimed.to_be_bytes());
    }
    m.extend(b"\xa3env\xdd");
    m.extend((n_env as u32).to_be_bytes());
    for _ in 0..n_env {
        m.extend(b"\x92\x90\x90");
    }
    m.extend(b"\xa6x-fspl\x81\xa2to\xdb");
    m.extend((to_len as u32).to_be_bytes());
    m.extend(std::iter::repeat_n(b'q', to_len));
    m.extend(b"\xa3pad\xdb");
    m.extend((pad as u32).to_be_bytes());
    m.extend(std::iter::repeat_n(b'p', pad));
    m
}

proptest! {
    #![proptest_config(config(64))]

    /// Any metadata of length N: decoding it from a slice allocates at most
    /// the budget, and never more than its vectors' growth can reach from
    /// N bytes (at most 48 bytes of vector per byte of input: an announced
    /// count allocates nothing by itself), plus a little.
    #[test]
    fn decoding_metadata_of_any_length_allocates_at_most_the_budget(
        n_empty in 0usize..30_000,
        n_short in 0usize..3_000,
        short_len in 0usize..40,
        lying in prop::option::of(prop_oneof![Just(u32::MAX), any::<u32>()]),
        n_env in 0usize..10_000,
        to_len in 0usize..50_000,
        pad in 0usize..50_000,
    ) {
        let meta = hostile_metadata(n_empty, n_short, short_len, lying, n_env, to_len, pad);
        let n = meta.len();
        let file = frame(&meta);
        let (r, peak) = peak_allocation(|| decode(&file));
        prop_assert!(
            peak <= MAX_DECODED_SIZE.min(48 * n) + BUDGET_SLACK,
            "decoding {n} bytes of metadata allocated {peak} bytes"
        );
        match r {
            // What a valid header keeps is exactly what the budget counted.
            Ok(d) => {
                prop_assert!(lying.is_none());
                prop_assert!(peak <= d.header.decoded_size(&d.ext) + BUDGET_SLACK);
                prop_assert_eq!(d.header.params().len(), n_empty + n_short);
            }
            Err(e) => prop_assert!(
                lying.is_some() || matches!(e, HeaderError::DecodedTooLarge),
                "{e}"
            ),
        }
        // From a stream, the raw block comes on top (read as it arrives).
        let (_, peak) = peak_allocation(|| read_header(&mut &file[..]));
        prop_assert!(peak <= n + MAX_DECODED_SIZE.min(48 * n) + BUDGET_SLACK);
    }
}

/// Regression: 64 MiB of metadata holding nothing but empty params (one
/// byte each) decoded to 1.6 GB of empty vectors, and a scan kept every
/// decoded header, so three such files took queue-ls to 4.8 GB and made
/// queue-process abort under a memory limit. Now metadata is at most
/// MAX_METADATA_LEN and what it decodes to at most MAX_DECODED_SIZE: at the
/// largest allowed size, every way of arranging those bytes (empty params,
/// one-byte params, empty env pairs, arrays announcing 2^32 elements, one
/// huge string) is decoded or refused within the budget.
#[test]
fn a_max_size_header_of_empty_params_decoded_to_gigabytes() {
    let max = MAX_METADATA_LEN as usize;
    assert_eq!(max, 16 << 20);
    assert_eq!(MAX_DECODED_SIZE, 16 << 20);
    // Each fills the metadata up to exactly the limit.
    let fill = |f: &dyn Fn(usize) -> Vec<u8>| {
        let base = f(0).len();
        let m = f(max - base);
        assert_eq!(m.len(), max);
        m
    };
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "empty params",
            fill(&|k| hostile_metadata(k, 0, 0, None, 0, 0, 0)),
            false,
        ),
        (
            "one-byte params",
            fill(&|k| hostile_metadata(0, k / 4, 1, None, 0, 0, k % 4)),
            false,
        ),
        (
            "empty env pairs",
            fill(&|k| hostile_metadata(0, 0, 0, None, k / 3, 0, k % 3)),
            false,
        ),
        // A param announcing 2^32 elements, followed by 1 MiB of them (one
        // at a time through serde: 16 MiB would take seconds in a debug
        // build, and the property test covers lying counts too).
        (
            "a param announcing 2^32 elements",
            {
                let mut m = b"\x83\xa3seq\x01\xa5ctime\x92\x00\x00".to_vec();
                m.extend(b"\xa8cmd_type\x81\xa7Command\x82\xa6params\x91\xdd\xff\xff\xff\xff");
                m.extend(std::iter::repeat_n(0x00, 1 << 20));
                m
            },
            false,
        ),
        // Within the budget: decode, keeping what the budget counted.
        (
            "one huge destination",
            fill(&|k| hostile_metadata(0, 0, 0, None, 0, k, 0)),
            true,
        ),
        (
            "a large unknown key",
            fill(&|k| hostile_metadata(10, 10, 10, None, 10, 10, k)),
            true,
        ),
    ];
    for (what, meta, decodes) in cases {
        let file = frame(&meta);
        let (r, peak) = peak_allocation(|| decode(&file));
        assert!(
            peak <= MAX_DECODED_SIZE + BUDGET_SLACK,
            "{what}: allocated {peak} bytes"
        );
        match r {
            Ok(d) => assert!(decodes, "{what}: decoded to {:?}", d.header.params().len()),
            Err(e) => {
                assert!(!decodes, "{what}: {e}");
                assert!(
                    matches!(e, HeaderError::DecodedTooLarge | HeaderError::Metadata(_)),
                    "{what}: {e}"
                );
            }
        }
        let (r2, peak) = peak_allocation(|| read_header(&mut &file[..]));
        assert!(
            peak <= max + MAX_DECODED_SIZE + BUDGET_SLACK,
            "{what}: read_header allocated {peak} bytes"
        );
        assert_eq!(r2.is_ok(), decodes, "{what}");
    }
    // One byte more is refused before anything is read.
    let mut meta = hostile_metadata(0, 0, 0, None, 0, 0, 0);
    meta.resize(max + 1, 0);
    assert!(matches!(
        decode(&frame(&meta)),
        Err(HeaderError::MetadataTooLarge(_))
    ));
}

/// The writer refuses what readers would refuse: a header over either
/// limit is not encoded (so `prepare` fails before using a number), and
/// one exactly at the decode budget is encoded and decoded.
#[test]
fn a_header_beyond_either_limit_is_not_written() {
    let with_params = |params: Vec<Vec<u8>>| JobHeader {
        seq: 1,
        ctime: Ctime { secs: 1, nanos: 0 },
        cmd_type: CmdType::Command(Command {
            params,
            env: vec![],
        }),
    };
    let none = Extension::default();
    // Empty params: 24 bytes decoded each (in one block, 32 bytes of
    // overhead), one byte stored.
    let most = (MAX_DECODED_SIZE - 32) / 24;
    let at_budget = with_params(vec![Vec::new(); most]);
    assert!(at_budget.decoded_size(&none) <= MAX_DECODED_SIZE);
    let bytes = at_budget.encode().unwrap();
    assert_eq!(decode(&bytes).unwrap().header, at_budget);
    let over = with_params(vec![Vec::new(); most + 1]);
    assert!(over.decoded_size(&none) > MAX_DECODED_SIZE);
    assert!(matches!(
        over.encode(),
        Err(fspl_format::EncodeError::DecodedTooLarge(_))
    ));
    // A destination one byte longer than the metadata may be.
    let long = Extension {
        to: Some("q".repeat(MAX_METADATA_LEN as usize)),
        ..Extension::default()
    };
    assert!(matches!(
        with_params(vec![]).encode_with(&long),
        Err(fspl_format::EncodeError::MetadataTooLarge(_))
    ));
}
